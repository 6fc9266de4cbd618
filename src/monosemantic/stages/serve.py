"""``monosemantic serve``: the feature browser (``monosemantic.web``) under uvicorn, on the loopback
interface unless told otherwise; elsewhere every route needs a token (one is made up when none is
given)."""

from __future__ import annotations

import secrets
import threading
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from monosemantic.errors import UserError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
) -> None:
    """Serve ``runs`` until interrupted; ``on_ready`` gets the plan once the runs are checked.

    Raises:
        UserError: a path is not a run directory, or a bad port.
    """
    import uvicorn

    from monosemantic.web.app import create_app
    from monosemantic.web.state import Served

    p = serve_plan(host, port, token)
    app = create_app(Served(runs), token=p.token)
    on_ready(p)
    if open_browser:
        threading.Timer(1.5, webbrowser.open, args=(p.url,)).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")
