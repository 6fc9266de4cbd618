"""The app factory: routes from ``api`` and ``pages``, an optional token on every route, security
headers, and error responses that carry a message and never a traceback (JSON under ``/api/``,
an HTML page elsewhere)."""

from __future__ import annotations

import gc
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from monosemantic.errors import UserError
from monosemantic.web.model_requests import Busy
from monosemantic.web.responses import templates
from monosemantic.web.state import NotFound, Served

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
TOKEN_COOKIE = "monosemantic_token"
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""No inline script, nothing from elsewhere: text from the database can only ever be text."""


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/") or request.url.path == "/api"


def error_response(request: Request, status: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message, "status": status}, status_code=status)
    return templates.TemplateResponse(
        request, "error.html", {"status": status, "message": message, "served": None}, status_code=status
    )


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return error_response(request, 404, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy) -> Response:
        return error_response(request, 503, str(exc))

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> Response:
        return error_response(request, 400, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ())[1:])}: {e.get('msg')}" for e in exc.errors()]
        return error_response(request, 422, "invalid request: " + "; ".join(parts))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.exception("error serving %s", request.url.path)  # the traceback goes to the log only
        return error_response(request, 500, f"internal error ({type(exc).__name__}); see the server's log")


def _install_token(app: FastAPI, token: str) -> None:
    """Every route needs the token: ``Authorization: Bearer T``, the cookie set after a first
    visit with ``?token=T``, or that query parameter."""

    @app.middleware("http")
    async def check_token(request: Request, call_next: Any) -> Response:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.cookies.get(TOKEN_COOKIE, "") or request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), token.encode()):
            return error_response(request, 401, "this server needs its token: open the link it printed")
        response: Response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response


SECURITY_HEADERS = {"content-security-policy": CSP, "x-content-type-options": "nosniff",
                    "referrer-policy": "no-referrer"}  # fmt: skip
"""The headers every answer carries."""


def secured(response: Response) -> Response:
    """``response`` with the security headers every answer carries."""
    response.headers.update(SECURITY_HEADERS)
    return response


class SecureHeaders:
    """ASGI middleware: every answer gets ``SECURITY_HEADERS`` (replacing any of the same name).
    Plain ASGI rather than ``@app.middleware``: Starlette's ``BaseHTTPMiddleware`` runs each
    request in a task group with a stream between app and server (~0.3 ms a request)."""

    RAW = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
    NAMES = {k for k, _ in RAW}

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in self.NAMES]
                message = {**message, "headers": kept + self.RAW}
            await send(message)

        await self.app(scope, receive, send_secured)


class LimitBody:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 and is never read whole,
    whether its Content-Length says so up front or a chunked body grows past it (then what
    arrived is held, at most ``limit`` bytes, and replayed to the app)."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        if declared or b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)  # the server stops at Content-Length
        held, size = [], 0
        while True:
            message = await receive()
            held.append(message)
            size += len(message.get("body", b""))
            if size > self.limit:
                return await self._refuse(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break

        async def replay() -> Any:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any) -> None:
        message = f"the request body is larger than {self.limit // 1024} KiB: send a shorter text"
        await secured(error_response(Request(scope), 413, message))(scope, receive, send)


def create_app(served: Served, token: str = "") -> FastAPI:
    """The browser over ``served``; with ``token``, every route (pages, API, static files) needs it."""
    from monosemantic.web import api, pages

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # what the imports made (torch, transformers, FastAPI: ~200k objects) lives as long as the
        # server: out of the collector's sight, a full collection no longer walks it (a feature
        # page makes thousands of small lists; the collections they set off were 10-20% of it)
        gc.freeze()
        yield
        served.model_queue.drop()
        for r in served.runs.values():
            r.close()

    app = FastAPI(
        lifespan=lifespan,
        title="monosemantic feature browser",
        version="1",
        description="Read-only JSON API over the feature databases of the served runs (see docs/browser.md).",
        openapi_url="/api/openapi.json",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: not offline
        redoc_url=None,
    )
    app.state.served = served
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _install_errors(app)

    if token:
        _install_token(app, token)
    app.add_middleware(SecureHeaders)  # around the token check too: a 401 carries the headers
    app.add_middleware(LimitBody, limit=api.MAX_BODY)  # outermost: before the token is even checked
    _list_served_names(app, served)
    return app


def _list_served_names(app: FastAPI, served: Served) -> None:
    """The schema names the served runs and their analysed dictionaries as the only values of the
    ``run`` and ``sae`` path parameters (so that a client, or a fuzzer, knows what exists)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = plain()
            saes: set[str] = set()
            for r in served.runs.values():
                if r.has_db:
                    with r.connect() as con:
                        saes |= set(r.saes(con))
            values = {"run": sorted(served.runs), "sae": sorted(saes)}
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    for param in op.get("parameters", []):
                        name = param.get("name")
                        if param.get("in") == "path" and values.get(name):
                            param["schema"]["enum"] = values[name]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


SERVE_ENV = "MONOSEMANTIC_SERVE"
"""With several workers, each worker process builds its app from this variable (``app_from_env``):
JSON ``{"runs": [paths], "token": token}``, set by ``stages.serve.run_serve``."""


def app_from_env() -> FastAPI:
    """The app of one worker of ``monosemantic serve --workers N``: the runs and the token from
    the environment (``SERVE_ENV``), which the command set before starting the workers."""
    import json
    import os

    spec = json.loads(os.environ[SERVE_ENV])
    return create_app(Served([Path(r) for r in spec["runs"]]), token=spec["token"])
