"""The JSON API under ``/api/``: everything the pages show. Inputs are bounded here (lengths,
pages, counts); the work is in ``queries`` and in the same ``stages`` functions the commands call."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any, Literal, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from monosemantic.stages.steer import SteerRequest
from monosemantic.web import model_requests, queries
from monosemantic.web.model_requests import MAX_FEATURES, MAX_NEW_TOKENS, MAX_SCALE
from monosemantic.web.state import Served, ServedRun


class ErrorBody(BaseModel):
    """Every error answer of the API: a one-line message and the HTTP status."""

    error: str = Field(description="what went wrong and what to do")
    status: int = Field(description="the HTTP status, repeated")


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    said = {
        400: "a request the data cannot answer (e.g. a text too long for the model)",
        404: "no such run, dictionary, feature or figure",
        413: "a body larger than the API reads",
        422: "a parameter or body outside its bounds",
        503: "the model is busy: too many requests wait for it",
    }
    return {s: {"model": ErrorBody, "description": said[s]} for s in statuses}


T = TypeVar("T")
router = APIRouter(prefix="/api", tags=["api"], responses=_errors(400, 404, 422))
"""Every route documents its errors (the app's handlers answer them all with ``ErrorBody``)."""

MAX_QUERY = 200
"""Characters of a search query, at most."""
MAX_TEXT = 2_000
"""Characters of a text to analyse or a prompt to steer, at most."""
MAX_PAGE = 100_000
MAX_BODY = 64 * 1024
"""Bytes of a request body, at most (the largest valid one, a steering request with a 2,000-character
prompt written as JSON escapes, is under 30 kB); a larger one is refused before it is read whole."""
RunName = Annotated[str, Path(max_length=200, description="a served run's name (see /api/runs)")]
SaeName = Annotated[str, Path(max_length=200, description="an analysed dictionary, e.g. relu-16384")]
FeatureId = Annotated[int, Path(ge=0, le=2**31 - 1, description="feature id")]
Page = Annotated[int, Query(ge=0, le=MAX_PAGE, description="page number, from 0")]
PerPage = Annotated[int, Query(ge=1, le=200, description="items per page")]
SearchText = Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="text to look for")]
Prompt = Annotated[str, Field(min_length=1, max_length=MAX_TEXT, description="the text to continue")]
Scale = Annotated[
    float, Field(ge=-MAX_SCALE, le=MAX_SCALE, description="a multiple of the feature's maximum activation")
]
FeatureItem = Annotated[int, Field(ge=0, le=2**31 - 1)]
Mode = Literal["clamp", "add"]
NewTokens = Annotated[
    int,
    Field(
        ge=1, le=MAX_NEW_TOKENS, description="tokens to generate per completion (the server may cap it lower)"
    ),
]
Temperature = Annotated[float, Field(ge=0, le=2, description="0 = greedy; above 0, sampled")]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1, description="seed of the sampling")]


STRICT = ConfigDict(strict=True, extra="ignore")
"""Bodies are taken as typed: ``true`` or ``"5"`` is not a count, ``5.0`` is not a feature id (a
number is still a scale); unknown keys are ignored."""


class SteerFeature(BaseModel):
    model_config = STRICT
    feature: FeatureItem
    scale: Scale = 10.0


class SteerBody(BaseModel):
    """A steering request: features with their scales, a mode, a prompt, generation settings."""

    model_config = STRICT

    prompt: Prompt
    features: list[SteerFeature] = Field(min_length=1, max_length=MAX_FEATURES)
    mode: Mode = "clamp"
    max_new_tokens: NewTokens = 32
    temperature: Temperature = 0.0
    seed: Seed = 0
    keep_error: bool = Field(True, description="keep the dictionary's error term (the paper does)")


class InspectBody(BaseModel):
    """A text to analyse."""

    model_config = STRICT

    text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT, description="the text to read")]
    per_token: Annotated[int, Field(ge=0, le=20, description="features listed per token")] = 5
    top: Annotated[int, Field(ge=0, le=50, description="features listed for the whole text")] = 20


_family_lock = threading.Lock()  # a family tree encodes held-out activations: one at a time


def served(request: Request) -> Served:
    return request.app.state.served


def get_run(request: Request, run: str) -> ServedRun:
    return served(request).run(run)


async def model_work(request: Request, kind: str, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in the served model's own thread (``state.ModelQueue``), awaited; ``kind``
    names what it does (its recent times predict the next one's).

    Raises:
        Busy: the requests ahead would keep it waiting longer than ``state.MAX_MODEL_WAIT``.
    """
    queue = served(request).model_queue
    wait = queue.enter(kind)
    if wait:
        n = sum(queue.waiting.values())
        raise model_requests.Busy(
            f"the model is busy for about {wait:.0f} s with {n} requests: try again in a minute"
        )
    try:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(queue.thread, queue.timed, kind, functools.partial(work, *args))
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.5)
            if done:
                return future.result()
            if await request.is_disconnected():  # nobody waits for it: drop it unless it runs
                future.cancel()
                raise model_requests.Busy("the client went away")
    finally:
        queue.leave(kind)


async def page_work(request: Request, work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a thread of the served pages' own small pool (``Served.page_limiter``):
    feature pages queue in order instead of sharing the GIL with every other waiting page."""
    limiter = served(request).page_limiter
    return await anyio.to_thread.run_sync(functools.partial(work, *args), limiter=limiter)


@router.get("/runs", summary="the served runs")
def runs(request: Request) -> list[dict[str, Any]]:
    return [{"name": r.name, "analysed": r.has_db} for r in served(request).runs.values()]


@router.get("/runs/{run}", summary="a run's model, layer, dictionaries with metrics, report figures")
def overview(request: Request, run: RunName) -> dict[str, Any]:
    return queries.overview(get_run(request, run))


@router.get("/runs/{run}/catalog", summary="features most specific to each probe set")
def catalog(request: Request, run: RunName) -> list[dict[str, Any]]:
    with get_run(request, run).connect() as con:
        return queries.catalog(con)


@router.get("/runs/{run}/saes/{sae}/features", summary="a page of a dictionary's features")
def feature_list(
    request: Request,
    run: RunName,
    sae: SaeName,
    page: Page = 0,
    per_page: PerPage = 50,
    order: Literal["id", "freq", "max_act", "score"] = "score",
) -> dict[str, Any]:
    r = get_run(request, run)
    with r.connect() as con:
        return queries.feature_list(r, con, sae, page, per_page, order)


@router.get("/runs/{run}/saes/{sae}/features/{feature}", summary="one feature")
async def feature(
    request: Request,
    run: RunName,
    sae: SaeName,
    feature: FeatureId,
    top: Annotated[int, Query(ge=1, le=100, description="top contexts, at most")] = 20,
) -> dict[str, Any]:
    return await page_work(request, feature_data, request, run, sae, feature, top)


def feature_data(request: Request, run: str, sae: str, feature: int, top: int = 20) -> dict[str, Any]:
    """``queries.feature`` of a served run.

    Raises:
        NotFound: no such run, dictionary or feature."""
    r = get_run(request, run)
    with r.connect() as con:
        return queries.feature(r, con, sae, feature, top)


@router.get(
    "/runs/{run}/saes/{sae}/features/{feature}/family",
    summary="how the feature splits in the larger dictionaries of its architecture",
)
def family(request: Request, run: RunName, sae: SaeName, feature: FeatureId) -> dict[str, Any]:
    from monosemantic.stages.features import run_family

    r = get_run(request, run)
    with r.connect() as con:
        r.check_sae(con, sae)
    with _family_lock:
        tree = run_family(r.path, feature, sae, sae.rsplit("-", 1)[0], k=3, min_cosine=0.3)
    return asdict(tree)


@router.get("/runs/{run}/saes/{sae}/search", summary="full-text search over contexts and explanations")
def text_search(
    request: Request, run: RunName, sae: SaeName, q: SearchText, page: Page = 0, per_page: PerPage = 20
) -> dict[str, Any]:
    return text_search_result(get_run(request, run), sae, q, page, per_page)


def text_search_result(r: ServedRun, sae: str, q: str, page: int, per_page: int) -> dict[str, Any]:
    """``queries.text_search`` of a served run, remembered until its database changes (the API and
    the search page ask the same question under the same key).

    Raises:
        NotFound: no feature database or no such dictionary.
    """
    return r.remembered(
        ("search", sae, q, page, per_page), lambda con: queries.text_search(r, con, sae, q, page, per_page)
    )


@router.get(
    "/runs/{run}/saes/{sae}/concepts",
    summary="concept search: features that fire strongly and specifically on the query (loads the model)",
    responses=_errors(503),
)
async def concept_search(
    request: Request,
    run: RunName,
    sae: SaeName,
    q: SearchText,
    top: Annotated[int, Query(ge=1, le=50, description="features to list")] = 10,
    matches: Annotated[int, Query(ge=0, le=64, description="corpus passages to use, at most")] = 16,
) -> dict[str, Any]:
    return await model_work(request, "concept", concept_search_result, request, run, sae, q, top, matches)


def concept_search_result(
    request: Request, run: str, sae: str, q: str, top: int = 10, matches: int = 16
) -> dict[str, Any]:
    """What ``concept_search`` answers, computed in the calling thread (it holds the model)."""
    from monosemantic.stages.features import run_search

    r = get_run(request, run)
    with r.connect() as con:
        r.check_sae(con, sae)
    windows: dict[int, Any] = r.cached(f"windows:{sae}", dict)  # filled under the model lock
    with served(request).models.use(r.path) as lm:
        result = run_search(
            r.path, q, sae, top, matches, lm=lm, semantic=served(request).semantic, window_cache=windows
        )
    return {
        "sae": result.sae,
        "query": q,
        "n_corpus": result.n_corpus,
        "hits": [{**h.__dict__, "snippet": s} for h, s in zip(result.hits, result.snippets, strict=True)],
        "explained": [{"id": j, "explanation": e} for j, e in result.explained],
    }


@router.get("/runs/{run}/saes/{sae}/map", summary="UMAP coordinates of every feature, with labels")
def feature_map(request: Request, run: RunName, sae: SaeName) -> dict[str, Any]:
    r = get_run(request, run)
    with r.connect() as con:
        return queries.feature_map(r, con, sae)


@router.post(
    "/runs/{run}/saes/{sae}/steer",
    summary="unsteered and steered completions of a prompt, scored by the clean model (loads the model)",
    responses=_errors(413),
)
def steer(request: Request, run: RunName, sae: SaeName, body: SteerBody) -> dict[str, Any]:
    req = SteerRequest([f.feature for f in body.features], [f.scale for f in body.features], body.mode)
    cfg = model_requests.generate_config(
        served(request), body.max_new_tokens, temperature=body.temperature, seed=body.seed,
        keep_error=body.keep_error,
    )  # fmt: skip
    return model_requests.steer(served(request), get_run(request, run), sae, req, body.prompt, cfg)


@router.get(
    "/runs/{run}/saes/{sae}/steer/stream",
    summary="the same as server-sent events, token by token: queued, start, token {which, text}, done, error",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "server-sent events"},
        **_errors(503),
    },
)
def steer_stream(
    request: Request,
    run: RunName,
    sae: SaeName,
    prompt: Annotated[str, Query(min_length=1, max_length=MAX_TEXT, description="the text to continue")],
    feature: Annotated[
        list[FeatureItem], Query(min_length=1, max_length=MAX_FEATURES, description="feature ids")
    ],
    scale: Annotated[
        list[Scale], Query(min_length=1, max_length=MAX_FEATURES, description="one scale, or one per feature")
    ],
    mode: Mode = "clamp",
    max_new_tokens: Annotated[int, Query(ge=1, le=MAX_NEW_TOKENS)] = 32,
    temperature: Annotated[float, Query(ge=0, le=2)] = 0.0,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
    keep_error: bool = True,
) -> StreamingResponse:
    cfg = model_requests.generate_config(
        served(request), max_new_tokens, temperature=temperature, seed=seed, keep_error=keep_error
    )
    events = model_requests.open_stream(
        served(request), get_run(request, run), sae, SteerRequest(feature, scale, mode), prompt, cfg
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/runs/{run}/saes/{sae}/inspect",
    summary="analyse a text: the features that fire on each token and over the whole text (loads the model)",
    responses=_errors(413, 503),
)
async def inspect(request: Request, run: RunName, sae: SaeName, body: InspectBody) -> dict[str, Any]:
    r = get_run(request, run)
    return await model_work(
        request,
        "inspect",
        model_requests.inspect,
        served(request),
        r,
        sae,
        body.text,
        body.per_token,
        body.top,
    )
