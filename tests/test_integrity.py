"""Part 2 of issue 17: every kind of file a stage writes is checked by its readers; a flipped byte
or a truncation gets a one-line error naming the file and what to rerun."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from monosemantic.integrity import load_checkpoint, seal_db, state_digest
from tests.helpers import TRAIN, cli, harvest_args, one_line_error, trained_and_analysed


def flip(path: Path, at: float = 0.6) -> None:
    """Flip every bit of one byte ``at`` (a fraction) into the file."""
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE: dict[str, Callable[[Path], None]] = {"flip": flip, "truncate": truncate}


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory, harvested: Path) -> Path:
    """A tiny run trained and analysed, once for the module; tests damage copies."""
    return trained_and_analysed(harvested, tmp_path_factory.mktemp("integrity"))


@pytest.fixture
def copy(analysed: Path, tmp_path: Path) -> Path:
    return shutil.copytree(analysed, tmp_path / "run")


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_shard_is_named_and_harvest_rewrites_it(
    capsys, monkeypatch, copy: Path, harvested: Path, tiny_llama_dir: Path, tiny_corpus: Path, how: str
) -> None:
    shard = copy / "activations" / "shard-00002.safetensors"
    good = shard.read_bytes()
    DAMAGE[how](shard)
    code, err = cli(capsys, monkeypatch, "train", "--out", copy, *TRAIN, "--sizes", "16", "--force")
    one_line_error(code, err, "shard-00002.safetensors")
    assert "rerun `monosemantic harvest" in err
    # the rerun harvest the message asks for restores the shard byte for byte
    assert cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, tiny_corpus, copy))[0] == 0
    assert shard.read_bytes() == good
    for later in sorted((harvested / "activations").glob("shard-*")):
        assert (copy / "activations" / later.name).read_bytes() == later.read_bytes()


def test_damaged_checkpoint_is_named(capsys, monkeypatch, copy: Path) -> None:
    import torch

    from monosemantic.errors import UserError

    state = copy / "saes" / "relu-16" / "state.pt"
    good, clean = state.read_bytes(), load_checkpoint(state, "cpu", "")
    detected = 0
    for at in [i / 20 for i in range(20)]:  # a byte of zip padding may change nothing: then read the same
        state.write_bytes(good)
        flip(state, at)
        try:
            got = load_checkpoint(state, "cpu", "rerun")
        except UserError as e:
            assert str(state) in str(e) and "\n" not in str(e)
            detected += 1
        else:
            assert state_digest(got) == state_digest(clean), at
            assert all(torch.equal(got["sae"][k], clean["sae"][k]) for k in clean["sae"])
    assert detected >= 15
    truncate(state)
    code, err = cli(capsys, monkeypatch, "train", "--out", copy, *TRAIN, "--sizes", "16")
    one_line_error(code, err, "state.pt is corrupt")


def test_checkpoint_digest_catches_a_changed_value(tmp_path: Path) -> None:
    import torch

    from monosemantic.errors import UserError
    from monosemantic.integrity import write_checkpoint

    path = tmp_path / "state.pt"
    write_checkpoint(path, {"step": 3, "w": torch.ones(4)})
    assert load_checkpoint(path, "cpu", "x")["step"] == 3
    state = torch.load(path, weights_only=True)
    state["w"][1] = 2.0  # a change torch cannot notice
    torch.save(state, path)
    with pytest.raises(UserError, match="checksum mismatch"):
        load_checkpoint(path, "cpu", "x")
    assert state_digest({"a": torch.zeros(2)}) != state_digest({"a": torch.zeros(3)})


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_dictionary_is_named(capsys, monkeypatch, copy: Path, how: str) -> None:
    DAMAGE[how](copy / "saes" / "relu-16" / "sae.safetensors")
    code, err = cli(capsys, monkeypatch, "evaluate", copy, "--loss-sequences", "0")
    one_line_error(code, err, "relu-16/sae.safetensors is corrupt")
    assert "rerun `monosemantic train`" in err
    # what the message says: delete it and rerun train, which writes it again from state.pt
    (copy / "saes" / "relu-16" / "sae.safetensors").unlink()
    assert cli(capsys, monkeypatch, "train", "--out", copy, *TRAIN, "--sizes", "16")[0] == 0
    assert cli(capsys, monkeypatch, "evaluate", copy, "--loss-sequences", "0")[0] == 0


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_database_is_named(capsys, monkeypatch, copy: Path, how: str) -> None:
    db = copy / "features.sqlite"
    assert (copy / "features.sqlite.crc").is_file()  # sealed when analyze released the run
    DAMAGE[how](db, **({"at": 0.97} if how == "flip" else {}))  # type: ignore[call-arg]
    code, err = cli(capsys, monkeypatch, "search", copy, "paris")
    one_line_error(code, err, "features.sqlite")
    assert "rerun `monosemantic analyze" in err


def test_database_seal_follows_its_writers(capsys, monkeypatch, copy: Path) -> None:
    """A writer removes the seal when it takes the run and writes a fresh one when it leaves: a
    database changed by a writer killed midway is never checked against a stale seal."""
    from monosemantic.runlock import run_lock

    seal = copy / "features.sqlite.crc"
    with run_lock(copy, "test"):
        assert not seal.exists()
    assert seal.is_file()
    with run_lock(copy, "test"):
        import sqlite3

        con = sqlite3.connect(copy / "features.sqlite")
        with con:
            con.execute("INSERT INTO meta VALUES ('written', 'by a test')")
        con.close()
    seal_db(copy)
    assert cli(capsys, monkeypatch, "search", copy, "paris")[0] == 0


def change_digit(path: Path) -> None:
    """Change the last digit of the file's first number: still valid JSON, a different value."""
    text = path.read_text()
    m = re.search(r":\s*-?\d+", text)
    assert m is not None, path
    at = m.end() - 1
    path.write_text(text[:at] + str((int(text[at]) + 1) % 10) + text[at + 1 :])


JSON_DAMAGE: dict[str, Callable[[Path], None]] = {**DAMAGE, "digit": change_digit}


@pytest.mark.parametrize("how", JSON_DAMAGE)
@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("activations/manifest.json", ["train", "--out", "{run}", *TRAIN, "--sizes", "16", "--force"]),
        ("saes/relu-16/cfg.json", ["evaluate", "{run}", "--loss-sequences", "0"]),
        ("saes/relu-16/metrics.json", ["report", "{run}"]),
    ],
)
def test_damaged_json_is_named(capsys, monkeypatch, copy: Path, name: str, command: list, how: str) -> None:
    if name.endswith("metrics.json"):
        assert cli(capsys, monkeypatch, "evaluate", copy, "--loss-sequences", "0")[0] == 0
    JSON_DAMAGE[how](copy / name)
    code, err = cli(capsys, monkeypatch, *[str(copy) if a == "{run}" else a for a in command])
    one_line_error(code, err, f"{name} is corrupt")


def test_json_checksum_round_trips_and_catches_a_changed_value(tmp_path: Path) -> None:
    from monosemantic.errors import UserError
    from monosemantic.fsio import CHECKSUM_KEY, read_json, write_json

    obj = {"b": 1.0000000000000002, "a": {"3": [1, None, "x"]}, "nan": float("nan"), 7: "int key"}
    write_json(tmp_path / "f.json", obj)
    back = read_json(tmp_path / "f.json")
    assert CHECKSUM_KEY not in back and back["b"] == obj["b"] and back["7"] == "int key"
    write_json(tmp_path / "g.json", back)  # rewriting what was read gives the same file
    assert (tmp_path / "g.json").read_text() == (tmp_path / "f.json").read_text()
    change_digit(tmp_path / "f.json")
    with pytest.raises(UserError, match="f.json is corrupt .*checksum"):
        read_json(tmp_path / "f.json")
    write_json(tmp_path / "foreign.json", {"a": 1}, checksum=False)  # another library's format
    assert CHECKSUM_KEY not in (tmp_path / "foreign.json").read_text()
    stale = {**json.loads((tmp_path / "g.json").read_text()), "b": 2}  # read raw, checksum included
    write_json(tmp_path / "g.json", stale)  # the old checksum is replaced, not trusted
    assert read_json(tmp_path / "g.json")["b"] == 2
