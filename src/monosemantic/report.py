"""The run's HTML report: one self-contained page (inline CSS, relative PNGs, no server, no JS)
summarising the harvest, every trained dictionary's metrics against the reference bounds of
*Scaling Monosemanticity*, and matplotlib figures of training, density and sparsity/fidelity.

Stages that have not run yet are reported as such; the report never requires a complete run."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure

from monosemantic.dictionary import SaeRun, load_saes
from monosemantic.features.report import features_section
from monosemantic.fsio import atomic_path, read_json
from monosemantic.plots import plain_log_ticks, save_png
from monosemantic.scaling import load_results
from monosemantic.scaling_plots import scaling_figures

L0_BOUND = 300.0
"""Scaling Monosemanticity: average number of active features per token stays below this."""
VE_BOUND = 0.65
"""Scaling Monosemanticity: every dictionary explains at least this fraction of the variance."""
DEAD_BOUNDS = ((1_000_000, 0.02), (4_000_000, 0.35), (34_000_000, 0.65))
"""(dictionary size, dead fraction) reported for the paper's 1M / 4M / 34M dictionaries."""

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.meta{color:#555}.meta b{color:#222}.note{color:#666;font-size:.92em}
.pending{background:#fff8e1;border-left:4px solid #f0b400;padding:.6em 1em}
table{border-collapse:collapse;font-size:.93em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.35em .6em;text-align:right}th{background:#f4f6f8}
td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#fafafa}
td.ok{color:#1b7a2f;font-weight:600}td.miss{color:#b3261e;font-weight:600}td.na{color:#aaa}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
pre{background:#f6f8fa;padding:1em;overflow:auto}
"""


def dead_bound(n_features: int) -> float:
    """Dead fraction of the paper's dictionary nearest in (log) size to ``n_features``."""
    return min(DEAD_BOUNDS, key=lambda b: abs(math.log(max(n_features, 1) / b[0])))[1]


def _num(d: dict[str, Any], key: str) -> float | None:
    """``d[key]`` as a finite float, or None when absent, null or not finite."""
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def training_dead_window(s: SaeRun) -> int | None:
    """Tokens without firing after which the training log counts a feature as dead: logged with
    each row, else rebuilt from cfg.json as ``train.dead_window`` does (runs logged before)."""
    logged = [int(r["dead_window"]) for r in s.log if isinstance(r.get("dead_window"), int)]
    if logged:
        return logged[-1]
    cfg = s.cfg
    if isinstance(cfg.get("dead_window"), int) and cfg["dead_window"] > 0:
        return int(cfg["dead_window"])
    if isinstance(cfg.get("n_steps"), int) and isinstance(cfg.get("batch_size"), int):
        return max(cfg["batch_size"], min(10_000_000, cfg["n_steps"] * cfg["batch_size"] // 20))
    return None


def _dead_title(saes: list[SaeRun]) -> tuple[str, dict[str, str]]:
    """The dead-fraction panel's title, and per dictionary a legend suffix when windows differ:
    the curve counts features silent for a short window, not the evaluation's dead fraction."""
    windows = {s.name: training_dead_window(s) for s in saes if s.log}
    known = {w for w in windows.values() if w is not None}
    if len(known) == 1 and None not in windows.values():
        return f"dead fraction: no firing in the last {known.pop():,} training tokens", {}
    suffix = {k: f", window {w:,} tokens" for k, w in windows.items() if w is not None}
    return "dead fraction: no firing in the window (legend)", suffix


def plot_training(saes: list[SaeRun], path: Path) -> str | None:
    """Loss, L0, variance explained (and dead fraction when logged) vs step, a line per size."""
    if not any(s.log for s in saes):
        return None
    panels = [
        ("loss", "loss", "log"),
        ("l0", "L0 (active features / token)", "log"),
        ("variance_explained", "variance explained", "linear"),
        ("dead_fraction", "dead fraction", "linear"),
    ]
    if not any("dead_fraction" in row for s in saes for row in s.log):
        panels.pop()
    dead_title, dead_suffix = _dead_title(saes)
    bounds = {"l0": (L0_BOUND, f"{L0_BOUND:.0f}"), "variance_explained": (VE_BOUND, f"{VE_BOUND:.0%}")}
    fig = Figure(figsize=(11, 3.6 * math.ceil(len(panels) / 2)))
    for j, (key, title, yscale) in enumerate(panels):
        ax = fig.add_subplot(math.ceil(len(panels) / 2), 2, j + 1)
        for i, s in enumerate(saes):
            pts = [(r["step"], r[key]) for r in s.log if _num(r, key) is not None and "step" in r]
            if pts:
                label = s.label + (dead_suffix.get(s.name, "") if key == "dead_fraction" else "")
                ax.plot(*zip(*pts, strict=True), color=f"C{i}", label=label, lw=1.4)
        positive = all(y > 0 for s in saes for r in s.log if (y := _num(r, key)) is not None)
        if yscale == "log" and positive:
            ax.set_yscale("log")
            plain_log_ticks(ax.yaxis)
        if key in bounds:
            ax.axhline(bounds[key][0], color="grey", ls="--", lw=1, label=f"paper bound {bounds[key][1]}")
        ax.set(title=dead_title if key == "dead_fraction" else title, xlabel="step")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_density(saes: list[SaeRun], path: Path) -> str | None:
    """Small multiples of the log10 feature-firing-frequency histogram, dead count annotated."""
    hists = [
        (i, s, h) for i, s in enumerate(saes) if (h := s.metrics.get("density_histogram")) and h.get("counts")
    ]
    if not hists:
        return None
    fig = Figure(figsize=(11, 2.6 * len(hists)))
    axes = fig.subplots(len(hists), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (i, s, h) in zip(axes, hists, strict=True):
        ax.stairs(h["counts"], h["bin_edges"], fill=True, color=f"C{i}", alpha=0.75)
        n_dead = int(h.get("n_dead", 0))
        ax.text(
            0.01,
            0.92,
            f"dead: {n_dead:,} of {s.n_features:,} ({n_dead / max(s.n_features, 1):.1%})",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
            bbox={"fc": "white", "ec": "#ccc"},
        )
        ax.set(title=s.label, ylabel="features")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("log10 firing frequency (fraction of tokens a feature fires on)")
    return save_png(fig, path)


def plot_l0_ve(saes: list[SaeRun], path: Path) -> str | None:
    """One labelled point per size: L0 (log x) vs variance explained, the paper's bounds as guides."""
    pts = [
        (i, s, l0, ve)
        for i, s in enumerate(saes)
        if (l0 := _num(s.metrics, "l0")) is not None
        and l0 > 0
        and (ve := _num(s.metrics, "variance_explained")) is not None
    ]
    if not pts:
        return None
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.axvline(L0_BOUND, color="grey", ls="--", lw=1, label=f"L0 < {L0_BOUND:.0f}")
    ax.axhline(VE_BOUND, color="grey", ls=":", lw=1, label=f"variance explained ≥ {VE_BOUND:.0%}")
    for i, s, l0, ve in pts:
        ax.scatter([l0], [ve], color=f"C{i}", s=50, zorder=3)
        ax.annotate(s.label, (l0, ve), textcoords="offset points", xytext=(6, 6), fontsize=9)
    xs = [p[2] for p in pts] + [L0_BOUND]
    ax.set_xlim(min(xs) / 2, max(xs) * 2)
    ax.set_ylim(min(0.0, *(p[3] for p in pts)), 1.0)
    ax.set(xlabel="L0 (active features / token, log scale)", ylabel="variance explained")
    ax.set_title("Sparsity vs reconstruction (upper left is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return save_png(fig, path)


def plot_loss_recovered(saes: list[SaeRun], path: Path) -> str | None:
    """Bar per size: fraction of the zero-ablation CE increase recovered by splicing in the SAE."""
    bars = [(i, s, v) for i, s in enumerate(saes) if (v := _num(s.metrics, "loss_recovered")) is not None]
    if not bars:
        return None
    fig = Figure(figsize=(max(5.0, 1.4 * len(bars) + 2), 4))
    ax = fig.add_subplot()
    rects = ax.bar([s.label for _, s, _ in bars], [v for *_, v in bars], color=[f"C{i}" for i, *_ in bars])
    ax.bar_label(rects, labels=[f"{v:.1%}" for *_, v in bars], fontsize=9)
    ax.set_ylim(min(0.0, *(v for *_, v in bars)), max(1.05, *(v * 1.05 for *_, v in bars)))
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(ylabel="loss recovered", title="Next-token loss recovered when the SAE is spliced in")
    ax.grid(alpha=0.3, axis="y")
    return save_png(fig, path)


class Cell(NamedTuple):
    """One table cell of the report: its text, CSS class ('ok', 'miss', 'na' or '') and hover title."""

    text: str
    cls: str = ""
    title: str = ""


def _cell(value: float | None, fmt: str, ok: bool | None = None) -> Cell:
    """A table cell; ``ok`` True/False marks it as meeting/missing a reference bound."""
    if value is None:
        return Cell("—", "na")
    text = fmt.format(value)
    if ok is None:
        return Cell(text)
    return Cell(f"{text} ✓", "ok") if ok else Cell(f"{text} ✗", "miss")


def _na_cell(why: str) -> Cell:
    """A metric that is undefined for this run, with the reason on hover."""
    return Cell("n/a", "na", why)


def metrics_notes(saes: list[SaeRun]) -> list[str]:
    """What the metrics table's dead fraction, KL and any n/a loss recovered mean (plain text)."""
    tokens = {int(s.metrics["n_density_tokens"]) for s in saes if s.metrics.get("n_density_tokens")}
    counts = " / ".join(f"{t:,}" for t in sorted(tokens))
    dead = f"never fired on {counts} tokens of the store" if tokens else "never fired"
    parts = [
        f"Dead (evaluation): the fraction of features that {dead} (the training curve's dead fraction "
        "uses a shorter window: see its title). KL: KL(P_clean ‖ P_spliced) of the next-token "
        "distributions, in nats, averaged over tokens."
    ]
    reasons = {s.metrics["loss_recovered_na"] for s in saes if s.metrics.get("loss_recovered_na")}
    parts += [f"Loss recovered n/a: {r}; the raw CE values are shown." for r in sorted(reasons)]
    return parts


def _metrics_table(saes: list[SaeRun]) -> dict[str, Any]:
    """One row per dictionary, bound-checked cells marked ✓ (meets) or ✗ (misses)."""
    heads = ["SAE", "features", "L0", "variance explained", "MSE", "dead (evaluation)", "dead bound", "dense",
             "CE clean", "CE spliced", "CE zero-ablated", "loss recovered", "KL (nats/token)"]  # fmt: skip
    rows = []
    for s in saes:
        m = s.metrics
        if not m:
            rows.append({"name": s.name, "n_features": s.n_features, "cells": None})
            continue
        l0, ve, dead = _num(m, "l0"), _num(m, "variance_explained"), _num(m, "dead_fraction")
        bound = dead_bound(s.n_features)
        cells = [
            _cell(l0, "{:.1f}", None if l0 is None else l0 < L0_BOUND),
            _cell(ve, "{:.1%}", None if ve is None else ve >= VE_BOUND),
            _cell(_num(m, "mse"), "{:.4g}"),
            _cell(dead, "{:.2%}", None if dead is None else dead <= bound),
            _cell(bound, "≤ {:.0%}"),
            _cell(_num(m, "dense_fraction"), "{:.2%}"),
            *(_cell(_num(m, k), "{:.3f}") for k in ("loss_clean", "loss_spliced", "loss_zero")),
            _na_cell(m["loss_recovered_na"])
            if m.get("loss_recovered_na")
            else _cell(_num(m, "loss_recovered"), "{:.1%}"),
            _cell(_num(m, "kl_spliced"), "{:.4f}"),
        ]
        rows.append({"name": s.name, "n_features": s.n_features, "cells": cells})
    return {"heads": heads, "rows": rows, "notes": metrics_notes(saes)}


CORE_COLUMNS = (
    ("ce_loss_score", "CE loss score", "{:.3f}"),
    ("kl_div_score", "KL div. score", "{:.3f}"),
    ("explained_variance", "explained variance", "{:.1%}"),
    ("mse", "MSE (raw)", "{:.4g}"),
    ("cossim", "cos(x, x̂)", "{:.3f}"),
    ("relative_reconstruction_bias", "rel. reconstruction bias", "{:.3f}"),
    ("l2_ratio", "‖x̂‖/‖x‖", "{:.3f}"),
    ("l0", "L0", "{:.1f}"),
    ("l1", "L1", "{:.3g}"),
    ("frac_alive", "alive", "{:.1%}"),
    ("freq_over_1_percent", "density > 1%", "{:.1%}"),
)
"""The columns of the core-metrics table: metrics.json "core" key, heading, format."""


def _core_table(saes: list[SaeRun]) -> dict[str, Any]:
    """The SAELens/SAEBench core metrics of each evaluated dictionary (docs/metrics.md); no rows
    when none has them."""
    rows = [
        {
            "name": s.name,
            "n_features": None,
            "cells": [_cell(_num(core, k), fmt) for k, _, fmt in CORE_COLUMNS],
        }
        for s in saes
        if (core := s.metrics.get("core") or {})
    ]
    return {"heads": ["SAE", *(h for _, h, _ in CORE_COLUMNS)], "rows": rows}


def _facts(manifest: dict[str, Any] | None) -> list[tuple[str, str]] | None:
    """The harvest summary (model, layer, tokens, scale, throughput, peak memory); None before harvest."""
    if manifest is None:
        return None
    facts = [(k, manifest.get(k)) for k in ("model", "layer", "d_model", "seq_len")]
    if (n := _num(manifest, "n_tokens")) is not None:
        facts.append(("tokens harvested", f"{n:,.0f}"))
    if (scale := _num(manifest, "scale")) is not None:
        facts.append(("normalization scale", f"{scale:.4g}"))
    harvest = manifest.get("harvest") or {}
    for key, label, fmt in [
        ("tokens_per_s", "harvest throughput", "{:,.0f} tokens/s"),
        ("peak_rss_mb", "peak memory", "{:,.0f} MB"),
        ("seconds", "harvest time", "{:,.1f} s"),
    ]:
        if (v := _num(harvest, key)) is not None:
            facts.append((label, fmt.format(v)))
    return [(k, str(v)) for k, v in facts if v is not None]


def _scaling_section(run_dir: Path, out_dir: Path) -> dict[str, Any] | None:
    """The scaling sweep's fitted laws and figures, when ``monosemantic scaling`` has run."""
    fits_path = run_dir / "scaling" / "fits.json"
    if not fits_path.is_file():
        return None
    fits = read_json(fits_path)
    lo, hi = fits["flops_range"]
    return {
        "n_points": fits["n_points"],
        "lo": lo,
        "hi": hi,
        "laws": list(fits["laws"].items()),
        "figures": scaling_figures(load_results(run_dir), fits, out_dir),
    }


def _figures(saes: list[SaeRun], out_dir: Path) -> list[dict[str, Any]]:
    """The metric figures, each with its PNG (None when its stage has not run) and caption."""
    plots: list[tuple[str, str, Callable[[list[SaeRun], Path], str | None]]] = [
        ("Training curves", "training.png", plot_training),
        ("Feature density", "density.png", plot_density),
        ("Sparsity vs reconstruction", "l0_vs_variance.png", plot_l0_ve),
        ("Loss recovered", "loss_recovered.png", plot_loss_recovered),
    ]
    captions = {
        "training.png": "The dead fraction here counts the features that did not fire in a short window "
        "of recent training tokens (see its title); the table's counts those that never fired on the "
        "evaluation tokens."
    }
    missing = "Not available yet (the stage that produces it has not run)."
    undefined = any(s.metrics.get("loss_recovered_na") for s in saes)
    return [
        {
            "title": title,
            "png": plot(saes, out_dir / file),
            "caption": captions.get(file, ""),
            "missing": "Undefined for this run: see the note under the table."
            if undefined and file == "loss_recovered.png"
            else missing,
        }
        for title, file, plot in plots
    ]


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report/index.html`` (template ``web/templates/report.html``) and its PNGs
    from whatever stages have run; return its path."""
    from markupsafe import Markup

    from monosemantic.web.render import environment

    run_dir = Path(run_dir)
    out_dir = run_dir / "report"
    toml_path, manifest_path = run_dir / "run.toml", run_dir / "activations" / "manifest.json"
    manifest = read_json(manifest_path) if manifest_path.exists() else None
    saes = load_saes(run_dir)
    page = (
        environment()
        .get_template("report.html")
        .render(
            name=run_dir.resolve().name,  # runs/<name>/: the directory is the run's name
            css=Markup(_CSS),
            facts=_facts(manifest),
            bounds={
                "l0": f"{L0_BOUND:.0f}",
                "ve": f"{VE_BOUND:.0%}",
                "deads": " / ".join(f"{d:.0%}" for _, d in DEAD_BOUNDS),
                "sizes": " / ".join(f"{n // 1_000_000}M" for n, _ in DEAD_BOUNDS),
            },
            metrics=_metrics_table(saes),
            core=_core_table(saes),
            figures=_figures(saes, out_dir) if saes else [],
            features=Markup(features_section(run_dir, out_dir)),
            scaling=_scaling_section(run_dir, out_dir),
            toml=toml_path.read_text(encoding="utf-8") if toml_path.exists() else None,
        )
    )
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page + "\n", encoding="utf-8")  # explicit: the page has non-ASCII marks (✓ ✗ ≥)
    return index
