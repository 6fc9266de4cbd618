"""What the pages and the API show, as JSON-ready dicts, read from a run's files and its feature
database through parameterised queries; lists come a page at a time, and a feature's contexts are
read for that feature only."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any

import numpy as np

from monosemantic.features import db
from monosemantic.features.search import fts_phrase
from monosemantic.fsio import read_json
from monosemantic.web.state import NotFound, ServedRun

PLOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}\.png$")
"""The report figures the overview shows (a file name, never a path)."""
ORDERS = {
    "id": "id",
    "freq": "freq DESC",
    "max_act": "max_act DESC",
    "score": "score_auc IS NULL, score_auc DESC",
}
"""Orders of the feature list: name -> SQL (from this table only, never from the request)."""
MAX_FTS_MATCHES = 20_000
"""Full-text matches counted per search, at most: a word found everywhere stays fast."""


def _num(d: dict[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) else None


def overview(run: ServedRun) -> dict[str, Any]:
    """The run's model and layer, every dictionary with its metrics (and analysis summary when
    analysed), and the report's figures."""
    from monosemantic.dictionary import load_saes

    manifest_path = run.path / "activations" / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    analysed: dict[str, dict[str, Any]] = {}
    if run.has_db:
        with run.connect() as con:
            for name, n in run.saes(con).items():
                row = db.analysis(con, name)
                stats = json.loads(row["stats"]) if row is not None and row["stats"] else {}
                n_expl, auc = con.execute(
                    "SELECT count(score_auc), avg(score_auc) FROM features WHERE sae = ?", (name,)
                ).fetchone()
                analysed[name] = {"n_features": n, "n_tokens": stats.get("n_tokens"),
                                  "dead_fraction": stats.get("dead_fraction"), "n_explained": n_expl,
                                  "mean_auc": auc}  # fmt: skip
    dictionaries = []
    for s in load_saes(run.path):
        m = s.metrics
        dictionaries.append(
            {
                "name": s.name,
                "n_features": s.n_features,
                "arch": s.cfg.get("arch"),
                "l0": _num(m, "l0"),
                "variance_explained": _num(m, "variance_explained"),
                "dead_fraction": _num(m, "dead_fraction"),
                "loss_recovered": _num(m, "loss_recovered"),
                "analysis": analysed.get(s.name),
            }
        )
    report = run.path / "report"
    plots = sorted(p.name for p in report.glob("*.png") if PLOT_NAME.match(p.name)) if report.is_dir() else []
    return {
        "name": run.name,
        "model": manifest.get("model"),
        "layer": manifest.get("layer"),
        "d_model": manifest.get("d_model"),
        "n_tokens": manifest.get("n_tokens"),
        "dictionaries": dictionaries,
        "analysed": list(analysed),
        "plots": plots,
    }


def _context(c: db.Context) -> dict[str, Any]:
    return {
        "kind": c.kind,
        "rank": c.rank,
        "band": c.band,
        "activation": c.activation,
        "peak": c.peak - c.start,
        "tokens": list(zip(c.tokens, np.round(c.acts, 4).tolist(), strict=True)),  # (text, activation) pairs
    }


def explanations(con: sqlite3.Connection, sae: str, ids: list[int]) -> dict[int, str]:
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = con.execute(
        f"SELECT id, explanation FROM features WHERE sae = ? AND id IN ({marks}) AND explanation IS NOT NULL",
        (sae, *ids),
    )
    return {int(r[0]): str(r[1]) for r in rows}


def feature(run: ServedRun, con: sqlite3.Connection, sae: str, fid: int, top: int = 20) -> dict[str, Any]:
    """One feature: statistics, explanation and score, histogram, top and quantile contexts, logit
    effects, nearest features in every size (with their explanations), catalog labels.

    Raises:
        NotFound: no such dictionary or feature.
    """
    from monosemantic.features.neighbors import neighbors_of

    n = run.check_sae(con, sae)
    if not 0 <= fid < n:
        raise NotFound(f"{sae} has no feature {fid}: ids run from 0 to {n - 1}")
    row = db.feature_row(con, sae, fid)
    words = run.words(con)
    near = []
    for other, items in neighbors_of(con, sae, fid).items():
        expl = explanations(con, other, [j for j, _ in items])
        near.append({"sae": other, "features": [{"id": j, "cosine": c, "explanation": expl.get(j)}
                                                for j, c in items]})  # fmt: skip
    labels = [
        {"probe_set": r[0], "rank": r[1], "score": r[2], "auc": r[3]}
        for r in con.execute(
            "SELECT probe_set, rank, score, auc FROM catalog WHERE sae = ? AND feature = ? ORDER BY rank",
            (sae, fid),
        )
    ]
    return {
        "sae": sae,
        "id": fid,
        "n_features": n,
        "freq": row["freq"],
        "n_fired": row["n_fired"],
        "max_act": row["max_act"],
        "mean_act": row["mean_act"],
        "explanation": row["explanation"],
        "explainer": row["explainer"],
        "score_auc": row["score_auc"],
        "score_bacc": row["score_bacc"],
        "histogram": {"counts": json.loads(row["histogram"]), "edges": run.edges(con)},
        "top": [_context(c) for c in db.contexts(con, sae, fid, "top", words)[:top]],
        "quantiles": [_context(c) for c in db.contexts(con, sae, fid, "quantile", words)],
        "promoted": db.loads(row["promoted"]) or [],
        "suppressed": db.loads(row["suppressed"]) or [],
        "neighbors": near,
        "catalog": labels,
    }


def feature_list(
    run: ServedRun, con: sqlite3.Connection, sae: str, page: int, per_page: int, order: str
) -> dict[str, Any]:
    """One page of a dictionary's features in the given order (a key of ``ORDERS``).

    Raises:
        NotFound: no such dictionary, or a page past the last one.
    """
    n = run.check_sae(con, sae)
    last = max(0, (n - 1) // per_page)
    if page > last:
        raise NotFound(f"{sae} has {n} features: pages run from 0 to {last}")
    rows = con.execute(
        "SELECT id, freq, max_act, explanation, score_auc FROM features WHERE sae = ? "
        f"ORDER BY {ORDERS[order]}, id LIMIT ? OFFSET ?",
        (sae, per_page, page * per_page),
    ).fetchall()
    return {
        "sae": sae,
        "page": page,
        "per_page": per_page,
        "order": order,
        "total": n,
        "features": [dict(r) for r in rows],
    }


def text_search(
    run: ServedRun, con: sqlite3.Connection, sae: str, query: str, page: int, per_page: int
) -> dict[str, Any]:
    """Full text: the features whose top contexts contain ``query`` (most matching contexts
    first), and those whose explanation matches it."""
    from monosemantic.errors import UserError

    run.check_sae(con, sae)
    phrase = fts_phrase(query)
    try:
        counts = con.execute(
            "SELECT feature, count(*) AS n FROM contexts WHERE sae = ? AND kind = 'top' AND id IN "
            "(SELECT rowid FROM contexts_fts WHERE contexts_fts MATCH ? LIMIT ?) "
            "GROUP BY feature ORDER BY n DESC, feature LIMIT ? OFFSET ?",
            (sae, phrase, MAX_FTS_MATCHES, per_page, page * per_page),
        ).fetchall()
        explained = db.search_explanations(con, sae, phrase, per_page) if page == 0 else []
    except sqlite3.OperationalError as e:
        raise UserError(f"cannot search for {query!r}: {e}") from e
    ids = [int(r[0]) for r in counts]
    expl = explanations(con, sae, ids)
    return {
        "sae": sae,
        "query": query,
        "page": page,
        "per_page": per_page,
        "contexts": [
            {"id": j, "matches": int(r[1]), "explanation": expl.get(j)}
            for j, r in zip(ids, counts, strict=True)
        ],
        "explanations": [{"id": j, "explanation": e} for j, e in explained],
    }


def catalog(con: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every catalog entry: probe set, dictionary, feature, rank, score, AUC, explanation."""
    rows = con.execute(
        "SELECT c.probe_set, c.sae, c.feature, c.rank, c.score, c.auc, f.explanation FROM catalog c "
        "LEFT JOIN features f ON f.sae = c.sae AND f.id = c.feature ORDER BY c.probe_set, c.sae, c.rank"
    )
    keys = ("probe_set", "sae", "feature", "rank", "score", "auc", "explanation")
    return [dict(zip(keys, tuple(r), strict=True)) for r in rows]


def feature_map(run: ServedRun, con: sqlite3.Connection, sae: str) -> dict[str, Any]:
    """UMAP coordinates of the dictionary's decoder directions (the report's, when it cached them;
    else computed here once and kept in memory: the server writes nothing into a run), with each
    feature's frequency, catalog label and explanation."""
    from monosemantic.dictionary import load_dictionary
    from monosemantic.features.feature_map import cached_embed_2d
    from monosemantic.features.neighbors import unit_directions

    run.check_sae(con, sae)

    def coords() -> list[list[float]]:
        module, _ = load_dictionary(run.path / "saes" / sae)
        dirs = unit_directions(module.W_dec).numpy()
        xy = cached_embed_2d(dirs, run.path / "report" / ".cache", write=False)
        return [[round(float(x), 4), round(float(y), 4)] for x, y in xy]

    xy = run.cached(f"map:{sae}", coords)
    freq = db.feature_stats(con, sae)["freq"].tolist()
    labels = {
        int(f): str(p)
        for p, f in con.execute("SELECT probe_set, feature FROM catalog WHERE sae = ? AND rank < 3", (sae,))
    }
    expl = {
        int(r[0]): str(r[1])
        for r in con.execute(
            "SELECT id, explanation FROM features WHERE sae = ? AND explanation IS NOT NULL", (sae,)
        )
    }
    return {
        "sae": sae,
        "x": [p[0] for p in xy],
        "y": [p[1] for p in xy],
        "freq": freq,
        "labels": {str(k): v for k, v in labels.items()},
        "explanations": {str(k): v for k, v in expl.items()},
    }


def plot_path(run: ServedRun, name: str) -> Any:
    """The report figure ``name`` of the run (a plain file name matching ``PLOT_NAME``).

    Raises:
        NotFound: a name with a path in it, or no such figure.
    """
    report = (run.path / "report").resolve()
    if not PLOT_NAME.match(name):
        raise NotFound(f"no figure {name!r}")
    path = (report / name).resolve()
    if path.parent != report or not path.is_file():
        raise NotFound(f"no figure {name!r} in {run.name}'s report")
    return path
