"""An analysed tiny run for the web tests, with markup planted in its database: a token whose text
is ``<script>`` (so that contexts carry it), an explanation with HTML in it, and a catalog entry."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monosemantic.config import AnalyzeConfig, HarvestConfig, TrainConfig
from monosemantic.features import db
from monosemantic.stages.features import run_analyze
from monosemantic.stages.pipeline import run_harvest, run_train

SCRIPT = "<script>alert(1)</script>"
EXPLAINED = 3
"""The feature of relu-64 given an explanation with markup."""


def make_analysed_run(out: Path, model: Path, corpus: Path) -> Path:
    hcfg = HarvestConfig(
        model=str(model), corpus=str(corpus), seq_len=16, layer=2, n_tokens=3000, n_eval_tokens=600,
        shard_tokens=600, device="cpu",
    )  # fmt: skip
    run_harvest(hcfg, out, False)
    run_train(TrainConfig(sizes=[16, 64], batch_size=256, epochs=2, device="cpu"), out, False)
    run_analyze(out, AnalyzeConfig(before=6, after=3, device="cpu"))
    con = db.open_db(out)
    try:
        with db.transaction(con):
            con.execute("UPDATE vocab SET token = ? WHERE id = 2", (SCRIPT.encode(),))  # the word 'the'
            db.set_explanation(con, "relu-64", EXPLAINED, f"{SCRIPT} & 'code' \"x\"", "test", 0.9, 0.8)
            con.execute("INSERT INTO catalog VALUES ('cities', 'relu-64', ?, 0, 0.5, 0.9)", (EXPLAINED,))
            top = con.execute(
                "SELECT feature FROM contexts WHERE sae = 'relu-64' AND kind = 'top' LIMIT 1"
            ).fetchone()
    finally:
        con.close()
    assert top is not None
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
