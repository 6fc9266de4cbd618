"""The JSON API under ``/api/``: everything the pages show. Inputs are bounded here (lengths,
pages, counts); the work is in ``queries`` and in the same ``stages`` functions the commands call."""

from __future__ import annotations

import threading
from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from monosemantic.web import queries
from monosemantic.web.state import Served, ServedRun

router = APIRouter(prefix="/api", tags=["api"])

MAX_QUERY = 200
"""Characters of a search query, at most."""
MAX_TEXT = 2_000
"""Characters of a text to analyse or a prompt to steer, at most."""
MAX_PAGE = 100_000
RunName = Annotated[str, Path(max_length=200, description="a served run's name (see /api/runs)")]
SaeName = Annotated[str, Path(max_length=200, description="an analysed dictionary, e.g. relu-16384")]
FeatureId = Annotated[int, Path(ge=0, le=2**31 - 1, description="feature id")]
Page = Annotated[int, Query(ge=0, le=MAX_PAGE, description="page number, from 0")]
PerPage = Annotated[int, Query(ge=1, le=200, description="items per page")]
SearchText = Annotated[str, Query(min_length=1, max_length=MAX_QUERY, description="text to look for")]

_family_lock = threading.Lock()  # a family tree encodes held-out activations: one at a time


def served(request: Request) -> Served:
    return request.app.state.served


def get_run(request: Request, run: str) -> ServedRun:
    return served(request).run(run)


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
def feature(
    request: Request,
    run: RunName,
    sae: SaeName,
    feature: FeatureId,
    top: Annotated[int, Query(ge=1, le=100, description="top contexts, at most")] = 20,
) -> dict[str, Any]:
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
    r = get_run(request, run)
    with r.connect() as con:
        return queries.text_search(r, con, sae, q, page, per_page)


@router.get(
    "/runs/{run}/saes/{sae}/concepts",
    summary="concept search: features that fire strongly and specifically on the query (loads the model)",
)
def concept_search(
    request: Request,
    run: RunName,
    sae: SaeName,
    q: SearchText,
    top: Annotated[int, Query(ge=1, le=50, description="features to list")] = 10,
    matches: Annotated[int, Query(ge=0, le=64, description="corpus passages to use, at most")] = 16,
) -> dict[str, Any]:
    from monosemantic.stages.features import run_search

    r = get_run(request, run)
    with r.connect() as con:
        r.check_sae(con, sae)
    with served(request).models.use(r.path) as lm:
        result = run_search(r.path, q, sae, top, matches, lm=lm)
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
