"""The feature stages over ``RUN/features.sqlite``: analyze, feature cards, search, family,
explain, catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, NamedTuple

import torch

from monosemantic.bounds import check_float, check_int
from monosemantic.config import (
    AnalyzeConfig,
    CatalogConfig,
    ExplainConfig,
    load_stage,
    record_stage,
    resolve_device,
)
from monosemantic.errors import UserError
from monosemantic.features.db import pick_sae
from monosemantic.runlock import writes_run
from monosemantic.stages.common import check_run, load_lm, load_run_dictionary, load_run_lm


@writes_run("run", "analyze")
def run_analyze(run: Path, cfg: AnalyzeConfig, force: bool = False) -> dict[str, dict[str, Any]]:
    """Analyse the run's dictionaries into features.sqlite (see ``features.analyze``); returns
    dictionary name -> summary (n_features, n_tokens, dead_fraction, tokens_per_s, seconds,
    peak_rss_mb)."""
    from monosemantic.features.analyze import analyze, check_inputs

    check_run(run)
    harvest = load_stage(run, "harvest")  # before run.toml is touched: no harvest, no analysis
    check_inputs(run, cfg)
    record_stage(run, "analyze", cfg, force=True)
    lm = load_lm(harvest.model, cfg.device, harvest.dtype)
    return analyze(run, cfg, lm, force=force, device=resolve_device(cfg.device))


def feature_card(run: Path, feature: int, sae: str = "", top: int = 8, neighbors: int = 5) -> Any:
    """One feature's card (a rich renderable): statistics, explanation, histogram, contexts, logit
    effects and its ``neighbors`` nearest features.

    Raises:
        UserError: no such run, dictionary or feature.
    """
    from monosemantic.features import db
    from monosemantic.features.card import card
    from monosemantic.features.neighbors import neighbors_of

    check_int("FEATURE", feature, 0)
    check_int("--top", top, 0)
    check_int("--neighbors", neighbors, 0)
    check_run(run)
    con = db.open_db(run, readonly=True)
    try:
        name = pick_sae(con, run, sae)
        db.feature_row(con, name, feature)
        near = (
            {k: v[:neighbors] for k, v in neighbors_of(con, name, feature).items()} if neighbors > 0 else {}
        )
        return card(con, name, feature, n_top=top, neighbors=near)
    finally:
        con.close()


def run_family(run: Path, feature: int, sae: str, arch: str, k: int, min_cosine: float) -> Any:
    """How ``feature`` of the smallest ``arch`` dictionary (or of ``sae``) splits in the larger
    ones: a ``features.family.Node`` tree.

    Raises:
        UserError: fewer than two sizes, unknown dictionary, or feature id out of range.
    """
    from monosemantic.activations import ActivationStore
    from monosemantic.dictionary import load_dictionary
    from monosemantic.features.family import family_tree

    check_int("FEATURE", feature, 0)
    check_int("--k", k, 1)
    check_float("--min-cosine", min_cosine, -1.0, 1.0)
    check_run(run)
    names = sorted(
        (p.parent.name for p in (run / "saes").glob(f"{arch}-*/sae.safetensors")),
        key=lambda n: int(n.split("-")[-1]),
    )
    if sae:
        if sae not in names:
            raise UserError(f"{run} has no {arch} dictionary {sae!r} (it has: {', '.join(names) or 'none'})")
        names = names[names.index(sae) :]
    if len(names) < 2:
        raise UserError(f"{run} needs two or more {arch} dictionaries of different sizes for a family tree")
    chain = [(n, load_dictionary(run / "saes" / n)[0]) for n in names]
    if not 0 <= feature < chain[0][1].n_features:
        raise UserError(
            f"{names[0]} has no feature {feature}: ids run from 0 to {chain[0][1].n_features - 1}"
        )
    store = ActivationStore(run)
    sample = torch.cat(list(store.iter_split("eval")))[:20_000]
    return family_tree(chain, feature, sample, k=k, min_cosine=min_cosine)


def snippet(con: sqlite3.Connection, sae: str, feature: int, words: list[bytes], width: int = 60) -> str:
    """The feature's strongest context, cut around its peak token (in [brackets]), on one line."""
    from monosemantic.features import db

    top = db.contexts(con, sae, feature, "top", words)[:1]
    if not top:
        return ""
    spans = top[0].spans()  # whole characters, where one is split over several tokens
    i = next((k for k, (_, _, positions) in enumerate(spans) if top[0].peak in positions), 0)
    texts = [t for t, _, _ in spans]
    left, peak, right = "".join(texts[:i]), texts[i] if texts else "", "".join(texts[i + 1 :])
    text = f"{left[-(width // 2) :]}[{peak}]{right[: width // 3]}"
    return text.replace("\n", "⏎")


class SearchResult(NamedTuple):
    sae: str
    hits: list[Any]
    """``features.search.Hit`` per feature, best first"""
    snippets: list[str]
    """each hit's strongest context"""
    n_corpus: int
    """corpus passages containing the query that were used beside the query itself"""
    explained: list[tuple[int, str]]
    """(feature, explanation) whose explanation matches the query"""


def run_search(
    run: Path,
    query: str,
    sae: str = "",
    top: int = 10,
    matches: int = 32,
    lm: Any = None,
    semantic: bool = True,
    window_cache: dict[int, Any] | None = None,
) -> SearchResult:
    """Features that fire strongly and specifically on ``query`` (see ``features.search``),
    reranked by meaning (``features.rerank``) when ``semantic`` and the MiniLM embedder is
    installed; ``lm``: the run's model when the caller holds it loaded (the web app), else loaded
    here; ``window_cache``: the reranker's per-feature embeddings of this dictionary, kept by a
    caller that searches it again (the web app).

    Raises:
        UserError: empty query, no such run or analysed dictionary.
    """
    from monosemantic.features import db
    from monosemantic.features.rerank import POOL, WindowEmbeddings, semantic_rerank
    from monosemantic.features.scorers import embedder_installed, shared_embedder
    from monosemantic.features.search import analysed_texts, fts_phrase, search

    check_int("--top", top, 1)
    check_int("--matches", matches, 0)
    check_run(run)
    if not query.strip():
        raise UserError("the search query is empty: give some text, e.g. 'SQL injection'")
    con = db.open_db(run, readonly=True)
    try:
        name = pick_sae(con, run, sae)
        d = load_run_dictionary(run, name)
        lm = lm if lm is not None else load_run_lm(run)
        texts = analysed_texts(con, name, load_stage(run, "harvest").corpus)
        rerank = semantic and embedder_installed()
        pool = max(top, POOL) if rerank else top
        hits, occs = search(con, lm, d.layer, name, d.sae, query, max_matches=matches, top=pool, texts=texts)
        if rerank:
            windows = WindowEmbeddings(con, name, shared_embedder(), window_cache)
            hits = semantic_rerank(hits, query, windows)[:top]
        words = db.vocab(con)
        return SearchResult(
            name,
            hits,
            [snippet(con, name, h.feature, words) for h in hits],
            sum(o.source != "query" for o in occs),
            db.search_explanations(con, name, fts_phrase(query), top),
        )
    finally:
        con.close()


class ExplainResult(NamedTuple):
    sae: str
    results: list[Any]
    """``features.explain_run.Scored`` per scored feature (empty: none had held-out contexts)"""
    chosen: int = 0
    """features drawn with --features (or given with --ids)"""
    skipped: int = 0
    """of those drawn, how many this explainer had explained already (left as they are)"""


@writes_run("run", "explain")
def run_explain(run: Path, cfg: ExplainConfig) -> ExplainResult:
    """Explain and score the chosen features (see ``features.explain_run``); the explanations go
    into the database."""
    from monosemantic.features import db
    from monosemantic.features.explain_run import (
        choose_features,
        explain_features,
        explained_by,
        explainer_label,
    )
    from monosemantic.features.label import default_labeler
    from monosemantic.features.scorers import ChatClient, Embedder

    check_run(run)
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, cfg.sae)
        chosen = choose_features(con, name, cfg.n_features, cfg.ids, cfg.seed)
        client = ChatClient(cfg.explainer_url, cfg.llm_model) if cfg.explainer_url else None
        embedder = None if client is not None else Embedder()
        labeler = default_labeler(embedder) if embedder is not None and cfg.explainer == "lexicon" else None
        # a drawn feature that this explainer has explained is left as it is: rerunning an
        # interrupted call finishes it, rerunning a finished one changes nothing (--again redoes)
        done = (
            set()
            if cfg.ids or cfg.again
            else explained_by(con, name, chosen, explainer_label(client, labeler))
        )
        todo = [j for j in chosen if j not in done]
        results = (
            explain_features(con, name, todo, embedder=embedder, client=client, labeler=labeler)
            if todo
            else []
        )
        return ExplainResult(name, results, len(chosen), len(done))
    finally:
        con.close()


class CatalogRow(NamedTuple):
    probe_set: str
    feature: int
    score: float
    auc: float
    label: str
    """its explanation, or its strongest context"""


class CatalogResult(NamedTuple):
    sae: str
    rows: list[CatalogRow]
    """the best 3 features of each probe set, sets in the catalog's order"""


def _ranked(entries: list) -> list[tuple[int, Any]]:
    """(rank within its probe set, entry); entries come best first within each set."""
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        out.append((seen.get(e.probe_set, 0), e))
        seen[e.probe_set] = seen.get(e.probe_set, 0) + 1
    return out


@writes_run("run", "catalog")
def run_catalog(run: Path, cfg: CatalogConfig) -> CatalogResult:
    """Rank the features most specific to each labelled probe set into the database's ``catalog``.

    Raises:
        UserError: no such run or analysed dictionary, or a malformed probe file.
    """
    from monosemantic.features import db
    from monosemantic.features.catalog import DEFAULT_PROBES, build_catalog, load_probes

    check_run(run)
    sets = load_probes(Path(cfg.probes) if cfg.probes else DEFAULT_PROBES)
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, cfg.sae)
        d = load_run_dictionary(run, name)
        lm = load_run_lm(run)
        max_act = torch.as_tensor(db.feature_stats(con, name)["max_act"], dtype=torch.float32)
        entries = build_catalog(lm, d.layer, d.sae, sets, max_act, cfg.top)
        with db.transaction(con):
            con.execute("DELETE FROM catalog WHERE sae = ?", (name,))
            con.executemany(
                "INSERT INTO catalog VALUES (?, ?, ?, ?, ?, ?)",
                [(e.probe_set, name, e.feature, rank, e.score, e.auc) for rank, e in _ranked(entries)],
            )
        words = db.vocab(con)
        rows = [
            CatalogRow(
                s.name,
                e.feature,
                e.score,
                e.auc,
                db.feature_row(con, name, e.feature)["explanation"] or snippet(con, name, e.feature, words),
            )
            for s in sets
            for e in [e for e in entries if e.probe_set == s.name][:3]
        ]
        return CatalogResult(name, rows)
    finally:
        con.close()
