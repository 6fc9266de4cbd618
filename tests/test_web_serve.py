"""`monosemantic serve`: the command serves the runs until stopped; binding beyond loopback warns
and needs a token."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from monosemantic.errors import UserError
from monosemantic.stages.serve import serve_plan
from monosemantic.web.live import free_port


def test_serve_command_serves_a_run_until_interrupted(tmp_path: Path) -> None:
    run = tmp_path / "myrun"
    run.mkdir()  # an empty run: the overview says what has not run yet
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monosemantic", "serve", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline, r = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/runs", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert r is not None and r.status_code == 200, proc.stderr.read() if proc.stderr else ""
        assert r.json() == [{"name": "myrun", "analysed": False}]
        page = httpx.get(f"http://127.0.0.1:{port}/run/myrun", timeout=5)
        assert page.status_code == 200 and "Run myrun" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/" in err


def test_serve_refuses_a_missing_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "monosemantic", "serve", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_binding_beyond_loopback_warns_and_makes_a_token() -> None:
    local = serve_plan("127.0.0.1", 8000, "")
    assert local.url == "http://127.0.0.1:8000/" and not local.warning and not local.token
    public = serve_plan("0.0.0.0", 8000, "")
    assert public.warning and len(public.token) >= 16 and public.url.endswith(f"?token={public.token}")
    assert serve_plan("0.0.0.0", 9000, "mine").token == "mine"
    with pytest.raises(UserError, match="--port"):
        serve_plan("127.0.0.1", 70000, "")
