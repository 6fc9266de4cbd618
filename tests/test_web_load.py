"""The load test (``bench/web_load.py``) works: a few clients for a few seconds against a real
``monosemantic serve`` on the tiny run, every kind of request answered, no error. Timings are
measured and recorded in docs/reliability.md, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.web_run import make_analysed_run

pytestmark = pytest.mark.slow  # a server process and a few hundred requests

ROOT = Path(__file__).resolve().parent.parent


def test_load_test_runs_and_gets_no_error(tmp_path: Path, tiny_llama_dir: Path, tiny_corpus: Path) -> None:
    run = make_analysed_run(tmp_path / "tiny", tiny_llama_dir, tiny_corpus)
    out = tmp_path / "load.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "web_load.py"), str(run), "--clients", "4", "--seconds", "4",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert set(got["results"]) == {"feature page", "full-text search", "concept search", "inspect (POST)"}
    for kind, r in got["results"].items():
        assert r["errors"] == 0, (kind, r["first_errors"])
    assert sum(r["requests"] for r in got["results"].values()) >= 8
    assert "| feature page |" in proc.stdout
