"""The server-rendered pages: each calls the same function as its ``/api/`` twin and renders it
with a Jinja2 template (autoescaped). They read without JavaScript; ``static/app.js`` adds the
token tooltips, the interactive map and the steering stream."""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from monosemantic.errors import UserError
from monosemantic.stages.steer import SteerRequest
from monosemantic.web import api, model_requests, queries
from monosemantic.web.model_requests import MAX_FEATURES, MAX_NEW_TOKENS
from monosemantic.web.responses import html_page
from monosemantic.web.state import ServedRun

router = APIRouter(include_in_schema=False)

OptionalText = Annotated[str, Query(max_length=api.MAX_QUERY)]


def _default_sae(r: ServedRun, sae: str) -> str:
    """The dictionary asked for, else the largest analysed one ('' when none is).

    Raises:
        NotFound: the dictionary asked for is not analysed in the run.
    """
    if not r.has_db:
        return ""
    with r.connect() as con:
        if sae:
            r.check_sae(con, sae)
            return sae
        names = list(r.saes(con))
    return names[-1] if names else ""


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> Response:
    runs = api.served(request).runs
    if len(runs) == 1:
        return RedirectResponse(f"/run/{next(iter(runs))}", status_code=307)
    return html_page(request, "home.html", runs=list(runs.values()))


@router.get("/run/{run}", response_class=HTMLResponse)
def overview(request: Request, run: api.RunName) -> Response:
    return html_page(request, "overview.html", run=run, o=queries.overview(api.get_run(request, run)))


@router.get("/run/{run}/plot/{name}")
def plot(request: Request, run: api.RunName, name: api.RunName) -> Response:
    return FileResponse(queries.plot_path(api.get_run(request, run), name), media_type="image/png")


@router.get("/run/{run}/catalog", response_class=HTMLResponse)
def catalog(request: Request, run: api.RunName) -> Response:
    with api.get_run(request, run).connect() as con:
        rows = queries.catalog(con)
    return html_page(request, "catalog.html", run=run, rows=rows)


@router.get("/run/{run}/{sae}/features", response_class=HTMLResponse)
def feature_list(
    request: Request,
    run: api.RunName,
    sae: api.SaeName,
    page: api.Page = 0,
    order: Literal["id", "freq", "max_act", "score"] = "score",
) -> Response:
    r = api.get_run(request, run)
    with r.connect() as con:
        listing = queries.feature_list(r, con, sae, page, 50, order)
    return html_page(request, "features.html", run=run, sae=sae, l=listing)


@router.get("/run/{run}/{sae}/feature/{feature}", response_class=HTMLResponse)
async def feature(request: Request, run: api.RunName, sae: api.SaeName, feature: api.FeatureId) -> Response:
    return await api.page_work(request, _feature_page, request, run, sae, feature)


def _feature_page(request: Request, run: str, sae: str, feature: int) -> Response:
    f = api.feature_data(request, run, sae, feature)

    def href(s: str, j: int) -> str:  # a Python function: a Jinja macro per neighbour was 0.5 ms a page
        return f"/run/{run}/{s}/feature/{j}"

    return html_page(request, "feature.html", run=run, sae=sae, f=f, href=href)


@router.get("/run/{run}/{sae}/map", response_class=HTMLResponse)
def feature_map(request: Request, run: api.RunName, sae: api.SaeName) -> Response:
    r = api.get_run(request, run)
    with r.connect() as con:
        r.check_sae(con, sae)
    return html_page(request, "map.html", run=run, sae=sae)


@router.get("/run/{run}/search", response_class=HTMLResponse)
async def search(
    request: Request,
    run: api.RunName,
    q: OptionalText = "",
    sae: Annotated[str, Query(max_length=200)] = "",
    mode: Literal["text", "concept"] = "text",
    page: api.Page = 0,
    text: Annotated[str, Query(max_length=api.MAX_TEXT, description="a text to analyse")] = "",
) -> Response:
    work = functools.partial(_search_page, request, run, q, sae, mode, page, text)
    if (q.strip() and mode == "concept") or text.strip():
        return await api.model_work(request, "search page", work)
    return await run_in_threadpool(work)


def _search_page(request: Request, run: str, q: str, sae: str, mode: str, page: int, text: str) -> Response:
    r = api.get_run(request, run)
    sae = _default_sae(r, sae)
    result: dict[str, Any] | None = None
    if q.strip() and sae:
        if mode == "concept":
            result = api.concept_search_result(request, run, sae, q)
        else:
            result = api.text_search_result(r, sae, q, page, 20)
    analysis = None
    if text.strip() and sae:
        analysis = model_requests.inspect(api.served(request), r, sae, text, per_token=5, top=20)
    with r.connect() as con:
        saes = list(r.saes(con))
    return html_page(
        request, "search.html", run=run, sae=sae, saes=saes, q=q, mode=mode, result=result, text=text,
        analysis=analysis, max_text=api.MAX_TEXT,
    )  # fmt: skip


def _steer_features(feature: list[str], scale: list[str]) -> list[tuple[int, float]]:
    """The form's rows (feature id, scale), blank ids left out, a blank scale 10.

    Raises:
        UserError: an id or a scale that is not a number.
    """
    out = []
    for i, f in enumerate(feature):
        if not f.strip():
            continue
        s = scale[i] if i < len(scale) and scale[i].strip() else "10"
        try:
            j, x = int(f), float(s)
        except ValueError as e:
            raise UserError(f"feature {f!r} with scale {s!r}: give a feature id and a number") from e
        if not 0 <= j < 2**31:
            raise UserError(f"feature {j} does not exist: ids start at 0")
        out.append((j, x))
    return out


@router.get("/run/{run}/steer", response_class=HTMLResponse)
def steer(
    request: Request,
    run: api.RunName,
    sae: Annotated[str, Query(max_length=200)] = "",
    feature: Annotated[list[str], Query(max_length=MAX_FEATURES + 1)] = [],  # noqa: B006 (FastAPI copies it)
    scale: Annotated[list[str], Query(max_length=MAX_FEATURES + 1)] = [],  # noqa: B006
    mode: Literal["clamp", "add"] = "clamp",
    prompt: Annotated[str, Query(max_length=api.MAX_TEXT)] = "",
    max_new_tokens: Annotated[int, Query(ge=1, le=MAX_NEW_TOKENS)] = 32,
    go: Annotated[str, Query(max_length=10)] = "",
) -> Response:
    """The playground; with ``go`` (the form's button without JavaScript) it also generates."""
    r = api.get_run(request, run)
    sae = _default_sae(r, sae)
    served = api.served(request)
    rows = _steer_features(feature, scale)
    with r.connect() as con:
        saes = list(r.saes(con))
        expl = queries.explanations(con, sae, [j for j, _ in rows]) if sae else {}
    result, error = None, ""
    if go and sae:
        req = SteerRequest([j for j, _ in rows], [s for _, s in rows], mode)
        try:
            result = model_requests.steer(
                served, r, sae, req, prompt, model_requests.generate_config(served, max_new_tokens)
            )
        except UserError as e:
            error = str(e)
    features = [{"id": j, "scale": s, "explanation": expl.get(j)} for j, s in rows]
    return html_page(
        request, "steer.html", run=run, sae=sae, saes=saes, features=features, mode=mode, prompt=prompt,
        max_new_tokens=min(max_new_tokens, served.max_new_tokens), max_new_tokens_cap=served.max_new_tokens,
        result=result, error=error, max_text=api.MAX_TEXT,
    )  # fmt: skip
