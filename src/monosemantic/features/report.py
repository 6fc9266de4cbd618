"""The feature section of the run's report: analysed dictionaries, explanation scores, the catalog,
a 2-D map of every analysed dictionary, splitting trees, a filterable table of features and a page
per listed feature with its contexts highlighted. The tables and the feature pages come from the
browser's templates (``web/templates``: ``report_tables.html``, ``feature_body.html``) and data
(``web.queries.feature``), so that the report and ``monosemantic serve`` show a feature the same
way; the section is an HTML string that ``monosemantic.report`` places in the page."""

from __future__ import annotations

import html
import json
import sqlite3
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from monosemantic.dictionary import load_dictionary
from monosemantic.features import db
from monosemantic.features.family import Node, family_tree
from monosemantic.features.feature_map import cached_embed_2d, plot_map
from monosemantic.features.neighbors import nearest, unit_directions
from monosemantic.fsio import write_text
from monosemantic.plots import save_png
from monosemantic.steer_report import steered_features, steering_section
from monosemantic.web import queries
from monosemantic.web.render import environment, stylesheet
from monosemantic.web.state import ServedRun

TABLE_ROWS = 300
_FILTER_JS = (
    "<script>function filt(q){q=q.toLowerCase();for(const r of document.querySelectorAll('#ftab tbody tr'))"
    "r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'}</script>"
)


def _e(x: object) -> str:
    return html.escape(str(x))


def feature_page(
    con: sqlite3.Connection, run: ServedRun, sae: str, feature: int, listed: set[tuple[str, int]], path: Path
) -> str:
    """Write the feature's page (the browser's template, ``feature_body.html``) to ``path``; links
    to the features of ``listed`` (those with a page), the others shown without one."""
    f = queries.feature(run, con, sae, feature)

    def href(s: str, j: int) -> str:
        return _href(s, j) if (s, j) in listed else ""

    page = environment().get_template("report_feature.html").render(f=f, sae=sae, href=href, css=stylesheet())
    write_text(path, page)
    return path.name


def _href(sae: str, feature: int) -> str:
    """A feature page's file name, relative to the other feature pages."""
    return f"{sae}-{feature}.html"


def _scores_plot(con: sqlite3.Connection, saes: list[str], path: Path) -> str | None:
    data = {
        s: [
            r[0]
            for r in con.execute(
                "SELECT score_auc FROM features WHERE sae = ? AND score_auc IS NOT NULL", (s,)
            )
        ]
        for s in saes
    }
    data = {s: v for s, v in data.items() if v}
    if not data:
        return None
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    for i, (s, v) in enumerate(data.items()):
        ax.hist(
            v,
            bins=[i / 20 for i in range(21)],
            alpha=0.5,
            color=f"C{i}",
            label=f"{s} (n={len(v)}, mean {np.mean(v):.2f})",
        )
    ax.axvline(0.5, color="grey", lw=0.8)
    ax.set(xlabel="detection AUC of the explanation", ylabel="features", title="Explanation scores")
    ax.legend(fontsize=8)
    return save_png(fig, path, crop=True)


def _map(con: sqlite3.Connection, run_dir: Path, sae: str, path: Path) -> str:
    sae_module, _ = load_dictionary(run_dir / "saes" / sae)
    coords = cached_embed_2d(unit_directions(sae_module.W_dec).numpy(), path.parent / ".cache")
    freq = db.feature_stats(con, sae)["freq"]
    labels = {
        int(f): str(p)
        for p, f in con.execute("SELECT probe_set, feature FROM catalog WHERE sae = ? AND rank < 3", (sae,))
    }
    return plot_map(coords, freq, path, f"{sae}: features by decoder direction (UMAP, cosine)", labels)


def _tree_html(node: Node) -> str:
    kids = "".join(
        f"<li>{_e(c.sae)} #{c.feature} <span class='note'>cos {c.cosine:.2f}, "
        f"P(fires | parent) {c.coactivation:.2f}</span>"
        f"{_tree_html(c)}</li>"
        for c in node.children
    )
    return f"<ul>{kids}</ul>" if kids else ""


def _trees(run_dir: Path, arch: str, n_roots: int = 3) -> str:
    names = sorted(
        (p.parent.name for p in (run_dir / "saes").glob(f"{arch}-*/sae.safetensors")),
        key=lambda n: int(n.split("-")[-1]),
    )
    if len(names) < 2:
        return ""
    chain = [(n, load_dictionary(run_dir / "saes" / n)[0]) for n in names]
    # roots: the features of the smallest dictionary with the most close relatives in the next size
    cos, _ = nearest(
        unit_directions(chain[0][1].W_dec),
        torch.arange(chain[0][1].n_features),
        unit_directions(chain[1][1].W_dec),
        3,
        same=False,
    )
    roots = (cos * (cos >= 0.4)).sum(1).argsort(descending=True)[:n_roots].tolist()
    from monosemantic.activations import ActivationStore

    sample = torch.cat(list(ActivationStore(run_dir).iter_split("eval")))[:20_000]
    parts = []
    for r in roots:
        tree = family_tree(chain, r, sample, k=3, min_cosine=0.4)
        parts.append(f"<p><b>{_e(tree.sae)} #{tree.feature}</b></p>{_tree_html(tree)}")
    return "".join(parts)


def features_section(run_dir: Path, out_dir: Path) -> str:
    """The report's feature section (pending note when nothing is analysed yet)."""
    if not (run_dir / db.DB_NAME).is_file():
        run = "<code>monosemantic analyze RUN</code>"
        return f'<h2>Features</h2><p class="pending">Not analysed yet: run {run}.</p>'
    con = db.open_db(run_dir, readonly=True)
    try:
        return _section(con, run_dir, out_dir)
    finally:
        con.close()


def _section(con: sqlite3.Connection, run_dir: Path, out_dir: Path) -> str:
    saes = db.analysed_saes(con)
    run = ServedRun(run_dir.resolve().name, run_dir)
    tables = environment().get_template("report_tables.html").module
    pages = out_dir / "features"
    parts = ["<h2>Features</h2>"]
    rows = []
    for s in saes:
        st = json.loads(db.analysis(con, s)["stats"])  # type: ignore[index]
        n_expl, mean_auc = con.execute(
            "SELECT count(score_auc), avg(score_auc) FROM features WHERE sae = ?", (s,)
        ).fetchone()
        rows.append({"sae": s, **st, "n_explained": n_expl, "mean_auc": mean_auc})
    parts.append(str(tables.analysed(rows)))  # type: ignore[attr-defined]
    if png := _scores_plot(con, saes, out_dir / "explanation_scores.png"):
        parts.append(f'<img src="{png}" alt="explanation scores">')
    listed: set[tuple[str, int]] = set()
    catalog = [
        dict(r)
        for r in con.execute(
            "SELECT c.probe_set, c.sae, c.feature, c.score, c.auc, f.explanation FROM catalog c "
            "LEFT JOIN features f ON f.sae = c.sae AND f.id = c.feature WHERE c.rank < 3 "
            "ORDER BY c.probe_set, c.sae, c.rank"
        )
    ]
    listed |= {(r["sae"], r["feature"]) for r in catalog}
    in_report = lambda s, j: "features/" + _href(s, j)  # noqa: E731
    if catalog:
        parts.append(str(tables.catalog(catalog, in_report)))  # type: ignore[attr-defined]
    parts.append(steering_section(con))
    listed |= steered_features(con)
    for s in saes:
        parts.append(
            f'<h3>Map of {_e(s)}</h3><img src="{_map(con, run_dir, s, out_dir / f"map-{s}.png")}" alt="map">'
        )
    arches = sorted({s.rsplit("-", 1)[0] for s in saes})
    for arch in arches:
        if trees := _trees(run_dir, arch):
            parts.append(f"<h3>Feature splitting ({_e(arch)}): families across sizes</h3>{trees}")
    best = [
        dict(r)
        for r in con.execute(
            "SELECT sae, id, freq, max_act, explanation, score_auc FROM features WHERE n_fired > 0 "
            "ORDER BY score_auc IS NULL, score_auc DESC, freq DESC LIMIT ?",
            (TABLE_ROWS,),
        )
    ]
    listed |= {(r["sae"], r["id"]) for r in best}
    parts.append(str(tables.features(best, TABLE_ROWS, in_report)) + _FILTER_JS)  # type: ignore[attr-defined]
    for s, f in sorted(listed):
        feature_page(con, run, s, f, listed, pages / _href(s, f))
    return "\n".join(parts)
