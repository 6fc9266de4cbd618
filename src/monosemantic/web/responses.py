"""HTML responses from the templates, for the app's error pages and every page route."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from monosemantic.web.render import environment

templates = Jinja2Templates(env=environment())


def html_page(request: Request, template: str, **context: Any) -> HTMLResponse:
    """Render a page template with the served runs in its context."""
    context.setdefault("served", request.app.state.served)
    return templates.TemplateResponse(request, template, context)
