"""The terminal card of one feature (``monosemantic feature RUN ID``): statistics, explanation,
activation histogram, top and quantile-sampled contexts with the firing tokens highlighted, logit
effects and nearest neighbours. Builds rich renderables; the CLI prints them."""

from __future__ import annotations

import json
import math
import sqlite3

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from monosemantic.features import db

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(counts: list[int], edges: list[float]) -> Text:
    """The occupied part of a log-binned histogram as one line, with its activation range; bar
    heights are log counts, so the rare strong activations stay visible."""
    nz = [i for i, c in enumerate(counts) if c > 0]
    if not nz:
        return Text("never fires", style="dim")
    lo, hi = nz[0], nz[-1]
    top = math.log1p(max(counts))
    bars = "".join(
        " " if c == 0 else SPARKS[min(7, int(math.log1p(c) / top * 7.999))] for c in counts[lo : hi + 1]
    )
    return Text.assemble(f"{edges[lo]:.3g} ", (bars, "cyan"), f" {edges[hi + 1]:.3g}")


def _token_text(tok: str) -> str:
    return tok.replace("\n", "⏎").replace("\t", "⇥")


def highlight(ctx: db.Context, scale: float) -> Text:
    """The context with each token's background as strong as its activation relative to ``scale``
    (the feature's maximum); the peak token is underlined."""
    out = Text()
    for tok, a, positions in ctx.spans():  # characters split over tokens show whole, at their max
        style = ""
        if a > 0:
            level = min(1.0, a / scale) if scale > 0 else 1.0
            g = int(235 - 155 * level)
            style = f"black on rgb(255,{g},{int(g * 0.8)})"
        if ctx.peak in positions and ctx.kind != "random":
            style += " underline"
        out.append(_token_text(tok), style=style.strip() or None)
    return out


def card(
    con: sqlite3.Connection,
    sae: str,
    feature: int,
    *,
    n_top: int = 8,
    neighbors: dict[str, list[tuple[int, float]]] | None = None,
) -> RenderableType:
    row = db.feature_row(con, sae, feature)
    words = db.vocab(con)
    edges = json.loads(db.get_meta(con, "hist_edges") or "[]")
    stats = Table.grid(padding=(0, 2))
    stats.add_row(
        f"fires on [bold]{100 * row['freq']:.3f}%[/] of tokens ({row['n_fired']:,})",
        f"max [bold]{row['max_act']:.3g}[/]",
        f"mean when firing [bold]{row['mean_act']:.3g}[/]",
    )
    parts: list[RenderableType] = [stats]
    if row["explanation"]:
        score = "" if row["score_auc"] is None else f"  (detection AUC {row['score_auc']:.2f}, "
        score += "" if row["score_bacc"] is None else f"balanced accuracy {row['score_bacc']:.2f})"
        parts.append(Text.assemble(("explanation: ", "bold"), row["explanation"], (score, "dim")))
    parts.append(Text.assemble(("activations: ", "bold"), sparkline(json.loads(row["histogram"]), edges)))
    scale = row["max_act"]
    top = db.contexts(con, sae, feature, "top", words)
    if top:
        parts.append(Text("top contexts", style="bold"))
        parts += [Text.assemble((f"{c.activation:7.3g}  ", "dim"), highlight(c, scale)) for c in top[:n_top]]
    sampled = db.contexts(con, sae, feature, "quantile", words)
    if sampled:
        parts.append(Text("one context per activation quantile band (lowest first)", style="bold"))
        seen: set[int | None] = set()
        for c in sampled:
            if c.band not in seen:
                seen.add(c.band)
                parts.append(Text.assemble((f"q{c.band} {c.activation:6.3g}  ", "dim"), highlight(c, scale)))
    if row["promoted"]:
        for label, key in (("promotes", "promoted"), ("suppresses", "suppressed")):
            toks = ", ".join(f"{_token_text(t)!r} {v:+.2f}" for t, v in json.loads(row[key]))
            parts.append(Text.assemble((f"{label}: ", "bold"), toks))
    for other, near in (neighbors or {}).items():
        label = "nearest in this dictionary" if other == sae else f"nearest in {other}"
        listed = ", ".join(f"#{j} ({cos:.2f})" for j, cos in near)
        parts.append(Text.assemble((f"{label} (decoder cosine): ", "bold"), listed))
    return Panel(Group(*parts), title=f"{sae} feature #{feature}", title_align="left")
