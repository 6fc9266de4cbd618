"""Parts 3 and 5 of issue 17 with real processes: one writer per run directory (a second gets one
line naming the first; a lock left by a killed writer is taken over), readers unaffected while a
writer works (WAL), a full disk named with nothing half-written, a dictionary too large for the
memory refused up front."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import TRAIN, WINDOW, cli, harvest_args, one_line_error, run_cli, trained_and_analysed

pytestmark = pytest.mark.slow  # real processes racing for a run


HOLD = """
import sys, time
from pathlib import Path
from monosemantic.runlock import run_lock
with run_lock(Path(sys.argv[1]), "train"):
    print("held", flush=True)
    time.sleep(120)
"""


def python(*args: str, **kw) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], text=True, env=env, **kw)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory: pytest.TempPathFactory, harvested: Path) -> Path:
    return trained_and_analysed(harvested, tmp_path_factory.mktemp("concurrency"))


def test_second_writer_is_refused_and_a_killed_writers_lock_is_taken_over(
    capsys, monkeypatch, analysed: Path, tmp_path: Path
) -> None:
    run = shutil.copytree(analysed, tmp_path / "run")
    holder = python("-c", HOLD, str(run), stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for args in (
            ["train", "--out", run, *TRAIN, "--sizes", "16"],
            ["analyze", run, *WINDOW, "--sae", "relu-16"],
            ["evaluate", run, "--loss-sequences", "0"],
        ):
            code, err = cli(capsys, monkeypatch, *args)
            one_line_error(code, err, f"pid {holder.pid}")
            assert "being written by `monosemantic train`" in err
        # readers are unaffected
        code, err = cli(capsys, monkeypatch, "search", run, "paris")
        assert code == 0, err
        holder.send_signal(signal.SIGKILL)  # the lock file stays behind, naming a dead pid
        holder.wait()
        assert str(holder.pid) in (run / ".lock").read_text()
        code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--sizes", "16")
        assert code == 0, err
    finally:
        holder.kill()
        holder.wait()


def test_two_real_train_processes_one_refused(analysed: Path, tmp_path: Path) -> None:
    run = shutil.copytree(analysed, tmp_path / "run")
    shutil.rmtree(run / "saes")
    args = ["-m", "monosemantic", "train", "--out", str(run), *TRAIN, "--epochs", "400", "--sizes", "16"]
    first = python(*args, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (run / "saes" / "relu-16" / "log.jsonl").exists() and first.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    second = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    first.send_signal(signal.SIGINT)
    assert first.wait(timeout=120) in (0, 130)
    assert second.returncode == 2, second.stderr
    assert f"pid {first.pid}" in second.stderr and len(second.stderr.strip().splitlines()) == 1


READ_LOOP = """
import sys, time
from monosemantic.features import db
from pathlib import Path
run, n, errors = Path(sys.argv[1]), 0, 0
end = time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        con = db.open_db(run)
        n += con.execute("SELECT count(*) FROM features").fetchone()[0] > 0
        con.close()
    except Exception as e:
        errors += 1
        print(repr(e), file=sys.stderr)
print(n, errors)
"""


def test_readers_read_while_analyze_writes(analysed: Path, tmp_path: Path) -> None:
    """A reader process queries features.sqlite in a loop while `analyze --force` rewrites it in
    another process: the reader never fails (WAL: it sees the last commit)."""
    run = shutil.copytree(analysed, tmp_path / "run")
    reader = python("-c", READ_LOOP, str(run), "8", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    writer = subprocess.run(
        [sys.executable, "-m", "monosemantic", "analyze", str(run), *WINDOW, "--sae", "relu-16",
         "--force", "--checkpoint-every", "8"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    out, err = reader.communicate(timeout=120)
    assert writer.returncode == 0, writer.stderr
    n, errors = map(int, out.split())
    assert errors == 0 and n > 10, err


def _limit_file_size(limit: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: EFBIG

    return pre


def test_harvest_on_a_full_disk(tiny_llama_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "monosemantic", *harvest_args(tiny_llama_dir, tiny_corpus, out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=_limit_file_size(20_000),  # a shard of 600 x 32 float16 is 38 kB
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"error: disk full at {out}/activations/shard-00000.safetensors: free "), err
    assert " GB and rerun" in err and len(err.splitlines()) == 1
    left = sorted(p.name for p in (out / "activations").iterdir())
    assert left == [], left  # no temporary file, no manifest naming a shard that is not there


def test_analyze_on_a_full_disk(analysed: Path, tmp_path: Path) -> None:
    run = shutil.copytree(analysed, tmp_path / "run")
    for f in ("features.sqlite", "features.sqlite.crc", "features.sqlite-wal", "features.sqlite-shm"):
        (run / f).unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "monosemantic", "analyze", str(run), *WINDOW, "--sae", "relu-16"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=_limit_file_size(40_000),
    )
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"error: disk full at {run}/features.sqlite: free "), err
    assert len(err.splitlines()) == 1
    # what was committed is whole: the database opens and holds no finished analysis
    con = sqlite3.connect(run / "features.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    if "analyses" in tables:  # the schema itself may not have fitted
        assert con.execute("SELECT count(*) FROM analyses WHERE finished = 1").fetchone()[0] == 0
    con.close()
    # with the space back, the rerun finishes
    code, err = run_cli("analyze", run, *WINDOW, "--sae", "relu-16")
    assert code == 0, err


def test_a_dictionary_larger_than_memory_is_refused_up_front(
    capsys, monkeypatch, analysed: Path, tmp_path
) -> None:
    from monosemantic.memory import check_train_memory, train_bytes

    run = shutil.copytree(analysed, tmp_path / "run")
    code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--sizes", "2000000000")
    one_line_error(code, err, "needs ~")
    assert "GB free" in err and not (run / "saes" / "relu-2000000000").exists()
    assert train_bytes(576, 16384, 4096) == 4 * (7 * (2 * 576 * 16384 + 16384 + 576) + 4 * 4096 * 16384)
    assert check_train_memory(32, [64], 256, "cpu", free=10**9) > 0
    assert train_bytes(576, 16384, 4096, shards=2) < train_bytes(576, 16384, 4096)
