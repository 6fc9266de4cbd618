"""Atomic file writes: every file lands whole or not at all (temp file in the same folder, then
``os.replace``), so a killed process never leaves a half-written file where a reader expects one."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from monosemantic.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""What a write returns when the disk (or the file size limit, or a quota) is exhausted."""


def disk_full_message(path: str | Path, need_bytes: int = 0) -> str:
    """ "disk full at FILE: free N GB and rerun", N being what the stage still has to write beyond
    the free space (``need_bytes``: 0 when unknown; N is at least 0.1)."""
    path = Path(path)
    folder = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    try:
        st = os.statvfs(folder)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    gb = max(0.1, (need_bytes - free) / 1e9)
    return f"disk full at {path}: free {gb:.1f} GB and rerun (the stage resumes where it stopped)"


@contextlib.contextmanager
def atomic_path(path: str | Path, need_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``. A full disk
    is a ``UserError`` (``need_bytes``: what the stage still has to write, for its message), and
    the temporary file is removed whatever happens."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and some writers (safetensors) replace the file: give the finished file
        # the permissions open() would
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in FULL_ERRNOS:
            raise UserError(disk_full_message(path, need_bytes)) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


CHECKSUM_KEY = "_crc32"
"""The key under which ``write_json`` stores the CRC-32 of a JSON object's other contents."""


def json_checksum(obj: Any) -> str:
    """CRC-32 (8 hex digits) of ``obj`` in a canonical form: as it reads back from JSON (integer
    keys become strings), keys sorted, no spaces, so the writer and a reader compute the same."""
    canonical = json.dumps(json.loads(json.dumps(obj)), sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(canonical.encode()):08x}"


def write_json(path: str | Path, obj: Any, *, checksum: bool = True) -> None:
    """Write ``obj`` as indented JSON, atomically. A dict gets its ``json_checksum`` under
    ``CHECKSUM_KEY`` (last), which ``read_json`` verifies; ``checksum=False`` for files in another
    library's format, whose readers may refuse keys they do not know."""
    if checksum and isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}  # one read with json.loads
        obj[CHECKSUM_KEY] = json_checksum(obj)
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file; a dict's ``CHECKSUM_KEY`` (if any: files from other libraries and older
    runs have none) is checked and removed.

    Raises:
        UserError: the file does not parse, or does not match its checksum (a flipped byte).
    """
    path = Path(path)
    fix = "delete it and rerun the stage that writes it"
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({str(e).splitlines()[0]}); {fix}") from e
    if isinstance(obj, dict) and CHECKSUM_KEY in obj:
        want = obj.pop(CHECKSUM_KEY)
        if want != json_checksum(obj):
            raise UserError(f"{path} is corrupt (its contents do not match its checksum); {fix}")
    return obj


def append_jsonl(path: str | Path, obj: dict[str, Any]) -> None:
    """Append one line; a torn last line from a killed process is skipped by ``read_jsonl``."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    if not Path(path).exists():
        return rows
    for line in Path(path).read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-serialisable settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """A short hash of a file's bytes."""
    return file_sha256(path)[:16]
