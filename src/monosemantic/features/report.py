"""The feature section of the run's report: analysed dictionaries, explanation scores, the catalog,
a 2-D map of every analysed dictionary, splitting trees, a filterable table of features and a page
per listed feature with its contexts highlighted. HTML strings; ``monosemantic.report`` places
them in the page."""

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

TABLE_ROWS = 300
_FILTER_JS = (
    "<script>function filt(q){q=q.toLowerCase();for(const r of document.querySelectorAll('#ftab tbody tr'))"
    "r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'}</script>"
)


def _e(x: object) -> str:
    return html.escape(str(x))


def context_html(c: db.Context, scale: float) -> str:
    spans = []
    for tok, a, positions in c.spans():  # characters split over tokens show whole, at their max
        alpha = min(1.0, a / scale) if scale > 0 and a > 0 else 0.0
        style = f"background:rgba(255,120,40,{alpha:.2f})" + (
            ";text-decoration:underline" if c.peak in positions else ""
        )
        title = " ".join(f"{c.acts[p - c.start]:.3g}" for p in positions)  # per token
        spans.append(f'<span style="{style}" title="{title}">{_e(tok).replace(chr(10), "⏎")}</span>')
    return f'<div class="ctx"><span class="note">{c.activation:.3g}</span> {"".join(spans)}</div>'


def feature_page(con: sqlite3.Connection, sae: str, feature: int, words: list[bytes], path: Path) -> str:
    row = db.feature_row(con, sae, feature)
    parts = [f"<h1>{_e(sae)} feature #{feature}</h1>"]
    parts.append(
        f'<p class="meta">fires on <b>{100 * row["freq"]:.3f}%</b> of tokens'
        f" · max <b>{row['max_act']:.3g}</b>"
        f" · mean when firing <b>{row['mean_act']:.3g}</b></p>"
    )
    if row["explanation"]:
        parts.append(
            f"<p><b>explanation</b>: {_e(row['explanation'])} (detection AUC {row['score_auc']:.2f})</p>"
        )
    for kind, title in (
        ("top", "Top contexts"),
        ("quantile", "Sampled by activation quantile (lowest first)"),
    ):
        ctxs = db.contexts(con, sae, feature, kind, words)
        parts.append(f"<h2>{title}</h2>" + "".join(context_html(c, row["max_act"]) for c in ctxs))
    if row["promoted"]:
        for label, key in (("promotes", "promoted"), ("suppresses", "suppressed")):
            toks = ", ".join(f"<code>{_e(repr(t))}</code> {v:+.2f}" for t, v in json.loads(row[key]))
            parts.append(f"<p><b>{label}</b>: {toks}</p>")
    write_text(path, _page(f"{sae} #{feature}", "".join(parts)))
    return path.name


def _page(title: str, body: str) -> str:
    css = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "line-height:1.5}"
        ".ctx{font-family:monospace;white-space:pre-wrap;border-bottom:1px solid #eee;padding:.2em 0}"
        ".note{color:#777}"
    )
    head = f'<meta charset="utf-8"><title>{_e(title)}</title><style>{css}</style>'
    return f'<!doctype html><html lang="en"><head>{head}</head><body>{body}</body></html>\n'


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
    con = db.open_db(run_dir)
    try:
        return _section(con, run_dir, out_dir)
    finally:
        con.close()


def _section(con: sqlite3.Connection, run_dir: Path, out_dir: Path) -> str:
    saes = db.analysed_saes(con)
    words = db.vocab(con)
    pages = out_dir / "features"
    parts = ["<h2>Features</h2>"]
    rows = []
    for s in saes:
        st = json.loads(db.analysis(con, s)["stats"])  # type: ignore[index]
        n_expl, mean_auc = con.execute(
            "SELECT count(score_auc), avg(score_auc) FROM features WHERE sae = ?", (s,)
        ).fetchone()
        auc_text = f"{mean_auc:.3f}" if mean_auc is not None else "—"
        rows.append(
            f"<tr><td>{_e(s)}</td><td>{st['n_features']:,}</td><td>{st['n_tokens']:,}</td>"
            f"<td>{100 * st['dead_fraction']:.1f}%</td>"
            f"<td>{st['tokens_per_s']:,.0f}</td><td>{n_expl}</td><td>{auc_text}</td></tr>"
        )
    parts.append(
        "<table><tr><th>dictionary</th><th>features</th><th>tokens analysed</th>"
        "<th>dead (no firing in the tokens analysed)</th>"
        "<th>tokens/s</th>"
        f"<th>explained</th><th>mean detection AUC</th></tr>{''.join(rows)}</table>"
    )
    if png := _scores_plot(con, saes, out_dir / "explanation_scores.png"):
        parts.append(f'<img src="{png}" alt="explanation scores">')
    listed: set[tuple[str, int]] = set()
    catalog = con.execute(
        "SELECT probe_set, sae, feature, score, auc FROM catalog WHERE rank < 3 ORDER BY probe_set, sae, rank"
    ).fetchall()
    if catalog:
        parts.append(
            "<h3>Catalog: features most specific to each probe set</h3><table><tr><th>probe set</th>"
            "<th>dictionary</th><th>feature</th><th>score</th><th>AUC</th><th>explanation</th></tr>"
        )
        for p, s, f, score, auc in catalog:
            listed.add((s, f))
            expl = db.feature_row(con, s, f)["explanation"] or ""
            parts.append(
                f"<tr><td>{_e(p)}</td><td>{_e(s)}</td><td><a href='features/{_e(s)}-{f}.html'>#{f}</a></td>"
                f"<td>{score:.3f}</td><td>{auc:.2f}</td><td>{_e(expl)}</td></tr>"
            )
        parts.append("</table>")
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
    best = con.execute(
        "SELECT sae, id, freq, max_act, explanation, score_auc FROM features WHERE n_fired > 0 "
        "ORDER BY score_auc IS NULL, score_auc DESC, freq DESC LIMIT ?",
        (TABLE_ROWS,),
    ).fetchall()
    parts.append(
        f"<h3>Features (top {TABLE_ROWS}: explained first, by score)</h3>"
        '<p><input placeholder="filter…" oninput="filt(this.value)"></p>'
        "<table id='ftab'><thead><tr><th>dictionary</th><th>feature</th><th>fires on</th><th>max</th>"
        "<th>AUC</th><th>explanation</th></tr></thead><tbody>"
    )
    for s, f, freq, mx, expl, auc in best:
        listed.add((s, f))
        auc_text = "—" if auc is None else f"{auc:.2f}"
        parts.append(
            f"<tr><td>{_e(s)}</td><td><a href='features/{_e(s)}-{f}.html'>#{f}</a></td>"
            f"<td>{100 * freq:.3f}%</td>"
            f"<td>{mx:.3g}</td><td>{auc_text}</td><td>{_e(expl or '')}</td></tr>"
        )
    parts.append("</tbody></table>" + _FILTER_JS)
    for s, f in sorted(listed):
        feature_page(con, s, f, words, pages / f"{s}-{f}.html")
    return "\n".join(parts)
