"""``monosemantic serve``: the feature browser (``monosemantic.web``) under uvicorn, on the loopback
interface unless told otherwise; elsewhere every route needs a token (one is made up when none is
given)."""

from __future__ import annotations

import json
import os
import secrets
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from monosemantic.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_WORKERS = 64


class ServePlan(NamedTuple):
    url: str
    """where to open the browser (with ``?token=`` when there is one)"""
    token: str
    warning: str
    """non-empty when the server is reachable from other machines"""


def serve_plan(host: str, port: int, token: str) -> ServePlan:
    """The URL, the token and the warning for serving on ``host:port``.

    Raises:
        UserError: a port outside 1..65535.
    """
    if not 0 < port < 65536:
        raise UserError(f"--port {port} must be between 1 and 65535")
    warning = ""
    if host not in LOOPBACK:
        token = token or secrets.token_urlsafe(16)
        warning = (
            f"serving on {host}: other machines can reach this server; every route needs the token "
            "in the link below (or the header Authorization: Bearer TOKEN)"
        )
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    return ServePlan(url, token, warning)


def run_serve(
    runs: list[Path],
    host: str,
    port: int,
    token: str,
    open_browser: bool,
    on_ready: Callable[[ServePlan], None] = lambda p: None,
    workers: int = 1,
) -> None:
    """Serve ``runs`` until interrupted; ``on_ready`` gets the plan once the runs are checked.

    ``workers`` > 1: that many server processes share the port (uvicorn's supervisor restarts one
    that dies). Each holds its own connections and caches and, once a page needs the model
    (inspect, steer, concept search), its own copy of it: memory grows with the workers that
    served such a page; requests for the model queue within each worker, not across them.

    Raises:
        UserError: a path is not a run directory, a bad port or number of workers.
    """
    import uvicorn

    from monosemantic.web.app import SERVE_ENV, create_app
    from monosemantic.web.state import Served

    if not 1 <= workers <= MAX_WORKERS:
        raise UserError(f"--workers {workers} must be between 1 and {MAX_WORKERS} (1 or the number of cores)")
    p = serve_plan(host, port, token)
    served = Served(runs)  # checks the runs before anything listens
    on_ready(p)
    if open_browser:
        threading.Timer(1.5, webbrowser.open, args=(p.url,)).start()
    if workers == 1:
        uvicorn.run(create_app(served, token=p.token), host=host, port=port, log_level="warning")
        return
    os.environ[SERVE_ENV] = json.dumps({"runs": [str(r) for r in runs], "token": p.token})
    uvicorn.run("monosemantic.web.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level="warning")  # fmt: skip
