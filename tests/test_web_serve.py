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


def test_serve_with_workers_serves_and_stops(tmp_path: Path) -> None:
    run = tmp_path / "myrun"
    run.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monosemantic", "serve", str(run), "--port", str(port), "--workers", "2",
         "--token", "tok"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    try:
        deadline, answers = time.monotonic() + 90, []
        while time.monotonic() < deadline and proc.poll() is None and len(answers) < 8:
            try:  # a new connection each time: the kernel spreads them over the workers
                answers.append(
                    httpx.get(f"http://127.0.0.1:{port}/api/runs", headers={"authorization": "Bearer tok"})
                )
            except httpx.TransportError:
                time.sleep(0.3)
        assert len(answers) == 8, proc.stderr.read() if proc.stderr else ""
        assert all(
            a.status_code == 200 and a.json() == [{"name": "myrun", "analysed": False}] for a in answers
        )
        assert httpx.get(f"http://127.0.0.1:{port}/api/runs").status_code == 401  # each worker has the token
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


@pytest.mark.parametrize("workers", ["0", "65"])
def test_serve_refuses_a_bad_number_of_workers(tmp_path: Path, workers: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "monosemantic", "serve", str(tmp_path), "--workers", workers],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2 and "--workers" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
