"""The app factory: routes from ``api`` and ``pages``, an optional token on every route, security
headers, and error responses that carry a message and never a traceback (JSON under ``/api/``,
an HTML page elsewhere)."""

from __future__ import annotations

import logging
import secrets
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


def create_app(served: Served, token: str = "") -> FastAPI:
    """The browser over ``served``; with ``token``, every route (pages, API, static files) needs it."""
    from monosemantic.web import api, pages

    app = FastAPI(
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

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    if token:
        _install_token(app, token)
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
