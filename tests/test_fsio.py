from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from monosemantic.errors import UserError
from monosemantic.fsio import append_jsonl, atomic_path, read_json, read_jsonl, write_json


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_disk_full_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="disk full"), atomic_path(tmp_path / "b.bin"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not any(tmp_path.iterdir())


def test_written_files_get_normal_permissions(tmp_path: Path) -> None:
    write_json(tmp_path / "c.json", {})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_torn_last_jsonl_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    append_jsonl(path, {"step": 1})
    append_jsonl(path, {"step": 2})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_corrupt_json_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text("{nope")
    with pytest.raises(UserError, match="corrupt"):
        read_json(tmp_path / "m.json")
