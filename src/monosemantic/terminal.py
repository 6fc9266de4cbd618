"""What the command line shows: the status console (stderr) and the summary tables (stdout) of
each stage's results. The stages return data; only the CLI calls these."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=True, soft_wrap=True)  # one line per message, also in logs


def say(message: str) -> None:
    """A one-line message on stderr, without rich's number highlighting."""
    console.print(message, highlight=False)


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = (), **kwargs: Any) -> Table:
    table = Table(title=title, **kwargs)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


def harvest_done(out: Path, manifest: dict[str, Any]) -> None:
    h = manifest["harvest"]
    console.print(
        f"harvest: {manifest['n_tokens']:,} activations at layer {manifest['layer']} "
        f"in {out / 'activations'}; "
        f"{h['tokens_per_s']:,.0f} tokens/s, peak RSS {h['peak_rss_mb']:,.0f} MiB"
    )
    for split in manifest.get("exhausted", []):
        console.print(f"[yellow]note: the corpus ran out of {split} text before the requested --tokens")


def _metric_cells(name: str, m: dict[str, Any]) -> list[str]:
    """A metrics.json's first cells: dictionary, features, L0, variance explained, dead %."""
    return [
        name,
        f"{m['n_features']:,}",
        f"{m['l0']:.1f}",
        f"{m['variance_explained']:.3f}",
        f"{100 * m['dead_fraction']:.1f}",
    ]


def evaluate_done(metrics: dict[str, dict[str, Any]], reused: list[str]) -> None:
    """The metrics table (stdout) with why loss recovered is n/a where it is, then the throughput
    line or that nothing needed measuring."""
    table = _table(
        "dictionaries (held-out activations)",
        ("dictionary", "features", "L0", "var. explained", "dead %", "dense %", "CE spliced",
         "loss recovered", "KL nats/token"),
    )  # fmt: skip
    notes: dict[str, list[str]] = {}  # why loss recovered is n/a -> the dictionaries concerned
    for name, m in sorted(metrics.items(), key=lambda kv: kv[1]["n_features"]):
        rec, kl, ce = m.get("loss_recovered"), m.get("kl_spliced"), m.get("loss_spliced")
        if m.get("loss_recovered_na"):
            notes.setdefault(m["loss_recovered_na"], []).append(name)
        table.add_row(
            *_metric_cells(name, m),
            f"{100 * m['dense_fraction']:.1f}",
            "n/a" if ce is None else f"{ce:.3f}",
            "n/a" if rec is None else f"{rec:.3f}",
            "n/a" if kl is None else f"{kl:.4f}",
        )
    first = next(iter(metrics.values()), {})
    caption = f"dead = never fired on {first.get('n_density_tokens', 0):,} tokens"
    if first.get("loss_clean") is not None:
        caption += (
            f"; next-token CE in nats/token: clean {first['loss_clean']:.3f}, zero-ablated "
            f"{first['loss_zero']:.3f}; KL(clean ‖ spliced) in nats per token"
        )
    table.caption = caption
    Console(width=max(Console().width, 120)).print(table)  # nine columns: names stay whole
    for why, names in notes.items():
        Console().print(f"loss recovered n/a for {', '.join(names)}: {why}")
    if len(reused) == len(metrics):
        console.print("evaluate: every dictionary's metrics.json is up to date (--force measures again)")
        return
    m = next(v for k, v in metrics.items() if k not in reused)["evaluate"]
    console.print(
        f"evaluate: {m['tokens_per_s']:,.0f} tokens/s (activations x dictionaries), "
        f"{m['seconds']:.0f} s, peak RSS {m['peak_rss_mb']:,.0f} MiB"
        + (f"; up to date, kept: {', '.join(reused)}" if reused else "")
    )


def scaling_point(row: dict[str, Any], trained: bool) -> None:
    how = f"{row['seconds']:.0f} s" if trained else "finished earlier or by another rank"
    say(
        f"level {row['level']}: C {row['flops']:.2g} FLOPs  n {row['n_features']:>6,}  "
        f"lr {row['lr']:.2g}  {row['steps']:>5} steps  loss {row['loss']:.4g}  ({how})"
    )


def scaling_fits(fits: dict[str, Any]) -> None:
    table = _table(
        "loss-optimal settings per compute level", ("compute (FLOPs)", "N_opt", "steps", "LR_opt", "loss")
    )
    for o in fits["levels"]:
        edge = "" if o["n_fitted"] else " (edge)"
        table.add_row(
            f"{o['flops']:.3g}",
            f"{o['n_opt']:,.0f}{edge}",
            f"{o['steps_opt']:,.0f}",
            f"{o['lr_opt']:.2g}",
            f"{o['loss_opt']:.4g}",
        )
    console.print(table)
    laws = _table("power laws y = A · C^a", ("quantity", "a", "95% CI", "R²"))
    for name, law in fits["laws"].items():
        lo, hi = law["ci"]
        laws.add_row(name, f"{law['exponent']:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{law['r2']:.3f}")
    console.print(laws)


def recommendation(rec: dict[str, Any], fits: dict[str, Any], flops: float) -> None:
    table = _table(f"recommended for C = {flops:.3g} training FLOPs", ("setting", "value"), left=("setting",))
    table.add_row("dictionary size", f"{rec['n_features']:,.0f} features")
    table.add_row("training steps", f"{rec['steps']:,.0f} (batch {fits['batch_size']})")
    table.add_row("training tokens", f"{rec['steps'] * fits['batch_size']:,.0f}")
    table.add_row("learning rate", f"{rec['lr']:.3g}")
    table.add_row("expected loss", f"{rec['loss']:.4g}")
    console.print(table)
    lo, hi = fits["flops_range"]
    if rec["extrapolation"] > 10:
        console.print(
            f"[yellow]warning:[/] {flops:.3g} FLOPs is {rec['extrapolation']:,.0f}x outside the measured "
            f"range {lo:.3g}–{hi:.3g}: the prediction is an extrapolation; rerun the sweep with --budget "
            "to measure closer",
            highlight=False,
        )
    else:
        console.print(
            f"extrapolation factor {rec['extrapolation']:.2g}x (measured range {lo:.3g}–{hi:.3g} FLOPs)"
        )


def analyze_done(run: Path, summaries: dict[str, dict[str, Any]]) -> None:
    table = _table(
        f"features in {run / 'features.sqlite'}",
        ("dictionary", "features", "tokens", "dead %", "tokens/s", "seconds", "peak RSS MiB"),
    )
    for name, s in summaries.items():
        table.add_row(
            name,
            f"{s['n_features']:,}",
            f"{s['n_tokens']:,}",
            f"{100 * s['dead_fraction']:.1f}",
            f"{s['tokens_per_s']:,.0f}",
            f"{s['seconds']:.0f}",
            f"{s['peak_rss_mb']:,.0f}",
        )
    Console().print(table)


def show(renderable: Any) -> None:
    """A card or tree on stdout, without number highlighting."""
    Console(highlight=False).print(renderable)


def family(tree: Any) -> None:
    """A ``features.family.Node`` tree as an indented rich tree."""
    from rich.tree import Tree

    def add(branch: Tree, node: Any) -> None:
        for c in node.children:
            label = f"{c.sae} #{c.feature}  cos {c.cosine:.2f}  P(fires | parent) {c.coactivation:.2f}"
            add(branch.add(label), c)

    root = Tree(f"{tree.sae} #{tree.feature}")
    add(root, tree)
    show(root)


def search_results(query: str, result: Any) -> None:
    """A ``stages.features.SearchResult`` as a table, then the matching explanations."""
    table = _table(
        f"{result.sae}: features for {escape(repr(query))} "
        f"(the query text + {result.n_corpus} corpus passages)",
        ("feature", "score", "strength", "hit", "lift", "freq %", "top ctx", "sim", "strongest context"),
        left=("strongest context",),
        caption="score = strength x log2(lift); strength: activation on the query span / the "
        "feature's max; hit: share of occurrences it fires on; top ctx: share of its top contexts "
        "containing the query; sim: MiniLM cosine of the query and its firing windows (the order is "
        "score x sim², when shown)",
    )
    for h, snip in zip(result.hits, result.snippets, strict=True):
        table.add_row(
            str(h.feature),
            f"{h.score:.2f}",
            f"{h.strength:.2f}",
            f"{h.hit_rate:.2f}",
            f"{h.lift:,.0f}",
            f"{100 * h.freq:.3f}",
            f"{h.context_precision:.2f}",
            _fmt(h.similarity),
            escape(snip),
        )
    Console(highlight=False, width=max(Console().width, 160)).print(table)
    if result.explained:
        show(
            "explanations mentioning it: " + "; ".join(f"#{j} {escape(text)}" for j, text in result.explained)
        )


def explanations(name: str, results: list[Any]) -> None:
    aucs = np.array([r.auc for r in results])
    baccs = np.array([r.balanced_accuracy for r in results])
    fuzz = np.array([r.fuzz_auc for r in results])
    fuzz_mean = f", fuzzing AUC mean {np.nanmean(fuzz):.3f}" if not np.isnan(fuzz).all() else ""
    table = _table(
        f"{name}: {len(results)} explanations, detection AUC mean {np.nanmean(aucs):.3f} "
        f"(median {np.nanmedian(aucs):.3f}), balanced accuracy mean {np.nanmean(baccs):.3f}{fuzz_mean}",
        ("feature", "AUC", "bal. acc.", "fuzzing", "explanation"),
        left=("explanation",),
    )
    for r in sorted(results, key=lambda r: -r.auc)[:15]:
        table.add_row(
            str(r.feature),
            f"{r.auc:.2f}",
            f"{r.balanced_accuracy:.2f}",
            _fmt(r.fuzz_auc),
            escape(r.explanation),
        )
    show(table)


def catalog(result: Any) -> None:
    """A ``stages.features.CatalogResult``: the best features of each probe set."""
    table = _table(
        f"{result.sae}: features most specific to each probe set",
        ("probe set", "feature", "score", "AUC", "explanation / strongest context"),
        left=("probe set", "explanation / strongest context"),
    )
    for r in result.rows:
        table.add_row(escape(r.probe_set), str(r.feature), f"{r.score:.3f}", f"{r.auc:.2f}", escape(r.label))
    Console(highlight=False, width=max(Console().width, 140)).print(table)


def import_done(out: Path, result: Any) -> None:
    """One line per fact of an ``ImportResult``: what was read, where it went, what comes next."""
    say(
        f"import: {result.format} {result.arch} dictionary of {result.n_features:,} features "
        f"(hook {result.hook or 'n/a'} -> layer {result.layer} of {result.model}) "
        f"as {out / 'saes' / result.name}"
    )
    say(f"next: monosemantic evaluate {out} ; monosemantic analyze {out} --sae {result.name}")


def export_done(result: Any) -> None:
    """The files an ``ExportResult`` wrote."""
    say(f"export: {result.sae} as {result.format} in {result.dest} ({len(result.files)} files)")


def serving(n_runs: int, plan: Any) -> None:
    """A ``stages.serve.ServePlan``: where the browser is, with a warning when others can reach it."""
    if plan.warning:
        console.print(f"[bold yellow]warning:[/] {plan.warning}", soft_wrap=True)
    console.print(f"serving {n_runs} run(s) at {plan.url} (Ctrl-C stops)", soft_wrap=True, highlight=False)


# --- steering and inspection -------------------------------------------------------------------


def _wide() -> Console:
    """stdout, at least 140 columns wide so that tables keep their numbers when piped to a file."""
    return Console(highlight=False, width=max(Console().width, 140))


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None or math.isnan(x) else format(x, spec)


def _fires(c: Any) -> str:
    return " ".join(f"{round(f * c.n_tokens)}/{c.n_tokens}" for f in c.fire_fraction)


def steer_side_by_side(result: Any) -> None:
    """A ``stages.steer.SideBySide``: both completions, their clean log-probs, and the effect."""
    base, steered, ivs = result
    label = ", ".join(f"#{iv.feature} {iv.mode} {iv.scale:g}×max" for iv in ivs)
    table = Table(title=f"prompt: {escape(repr(base.prompt))}", show_lines=True)
    table.add_column("unsteered", ratio=1)
    table.add_column(f"steered: {label}", ratio=1)
    table.add_row(escape(base.text), escape(steered.text))
    table.add_row(
        f"clean log-prob {base.logprob:.1f} ({base.logprob_per_token:.2f}/token)",
        f"clean log-prob {steered.logprob:.1f} ({steered.logprob_per_token:.2f}/token)",
    )
    table.add_row(f"feature fires on {_fires(base)} tokens", f"feature fires on {_fires(steered)} tokens")
    out = _wide()
    out.print(table)
    many = len(ivs) > 1
    out.print(
        f"effect: the steered feature{'s' if many else ''} fire{'' if many else 's'} on "
        f"{_fires(steered)} generated tokens (unsteered {_fires(base)}) when the clean model rereads "
        f"the text; promoted tokens' log-mass {_fmt(steered.promoted_logmass)} vs "
        f"{_fmt(base.promoted_logmass)}; log-prob/token {steered.logprob_per_token:.2f} vs "
        f"{base.logprob_per_token:.2f}"
    )


def steer_sweep(title: str, rows: list[tuple[float | None, Any]]) -> None:
    """One completion per scale (``stages.steer.run_sweep``; scale None: unsteered); ``title`` is
    plain text."""
    columns = ("scale", "completion", "log-prob/token", "repetition", "fires on")
    table = _table(escape(title), columns, left=("completion",))
    table.show_lines = True
    for s, c in rows:
        scale = "unsteered" if s is None else f"{s:g}"
        table.add_row(scale, escape(c.text), f"{c.logprob_per_token:.2f}", _fmt(c.repetition), _fires(c))
    _wide().print(table)


def steer_effects(sae: str, effects: list[Any], cfg: Any) -> None:
    """The effect table of ``steer --eval`` and of the demo's example (``steer_eval.Effect``)."""
    out = _wide()
    if not effects:
        out.print("[yellow]note: no feature fires specifically on the demo's query: no steering example")
        return
    table = _table(
        f"{sae}: steering over {effects[0].n_prompts} neutral prompts, {cfg.max_new_tokens} new tokens, "
        f"error term {'kept' if cfg.keep_error else 'dropped'}; each cell: steered (unsteered)",
        ("feature", "mode", "scale", "fires", "fires ≥0.1 max", "rel", "promoted", "log-prob", "repetition"),
        caption="fires: share of completions on which the feature fires (activation > 0) when the clean "
        "model rereads them; fires ≥0.1 max: the same, counting only activations of a tenth of its max "
        "or more; rel: its largest activation / its max; promoted: log Σ p of its promoted tokens; "
        "log-prob: per generated token (clean model); repetition: share of repeated 4-grams",
    )

    def pair(x: float, base: float) -> str:
        return f"{_fmt(x)} ({_fmt(base)})"

    for e in effects:
        table.add_row(
            str(e.feature), e.mode, f"{e.scale:g}", pair(e.fire_rate, e.base_fire_rate),
            pair(e.strong_fire_rate, e.base_strong_fire_rate), pair(e.relative, e.base_relative),
            pair(e.promoted_logmass, e.base_promoted_logmass), pair(e.logprob, e.base_logprob),
            pair(e.repetition, e.base_repetition),
        )  # fmt: skip
    out.print(table)
    seen = set()
    for e in effects:  # the first prompt's completion at each scale
        if e.scale not in seen:
            seen.add(e.scale)
            out.print(f"example at scale {e.scale:g}: {escape(repr(e.example))}")
    out.print(f"unsteered: {escape(repr(effects[0].base_example))}")


def inspection(result: Any) -> None:
    """A ``features.inspect.Inspection``: features per token, then over the whole text."""
    out = _wide()
    table = _table(
        f"{result.sae}: features per token",
        ("pos", "token", "features (activation, share of max, explanation)"),
        left=("token", "features (activation, share of max, explanation)"),
    )
    for t in result.tokens:
        cells = [
            escape(f"#{f.feature} {f.activation:.2f} ({_fmt(f.relative)}) {f.explanation or ''}".rstrip())
            for f in t.features
        ]
        table.add_row(str(t.position), escape(repr(t.token)), "\n".join(cells))
    out.print(table)
    summary = _table(
        "most active over the text, relative to each feature's max",
        ("feature", "max", "share of max", "tokens", "peak", "explanation"),
        left=("explanation",),
    )
    for f in result.top:
        summary.add_row(
            str(f.feature), f"{f.max_activation:.2f}", f"{f.relative:.2f}", str(f.n_tokens),
            escape(repr(result.tokens[f.peak - 1].token)), escape(f.explanation or ""),
        )  # fmt: skip
    out.print(summary)
    out.print(
        f"{len(result.tokens)} tokens read in {1000 * result.seconds:.0f} ms (forward to the layer + encode)"
    )


def demo_summary(s: Any) -> None:
    """A ``stages.summary.DemoSummary``: metrics, concept features, the report, what to try next."""
    out = Console(highlight=False, width=max(Console().width, 100))
    table = _table(
        "what the demo trained (held-out activations)",
        ("dictionary", "features", "L0", "var. explained", "dead %", "loss recovered"),
    )
    for name, m in sorted(s.metrics.items(), key=lambda kv: kv[1]["n_features"]):
        rec = m.get("loss_recovered")
        table.add_row(*_metric_cells(name, m), "n/a" if rec is None else f"{rec:.3f}")
    out.print(table)
    if s.concepts:
        out.print("\nfeatures it found for a few concepts (monosemantic search):")
        for c in s.concepts:
            out.print(f"  {escape(repr(c.concept))} -> {c.sae} #{c.feature}: {escape(c.explanation)}")
            out.print(f"      strongest context: …{escape(c.context)}…")
    first = s.concepts[0] if s.concepts else None
    sae = f" --sae {first.sae}" if first else ""
    feature = first.feature if first else 0
    out.print(f"\nreport: {s.report}")
    out.print("try next:")
    steer = f'monosemantic steer {s.run}{sae} --feature {feature} --scale 1.5 --prompt "I woke up and"'
    for what, command in (
        ("features for a concept", f'monosemantic search {s.run} "Elizabeth"{sae}'),
        ("one feature's card", f"monosemantic feature {s.run} {feature}{sae}"),
        ("steer the model with it", steer),
        ("browse every feature", f"monosemantic serve {s.run} --open"),
    ):
        out.print(f"  {what:<24} {escape(command)}", soft_wrap=True)
