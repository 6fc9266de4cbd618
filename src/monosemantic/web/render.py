"""The Jinja2 environment of the browser's pages and of the static report (one set of templates,
so that both show a feature the same way), and the HTML fragments too hot for a template loop: a
context is dozens of tokens, a feature page shows up to 50 contexts, and Jinja's per-token overhead
made the page 3x slower than its data. Every piece of text goes through ``html.escape``; templates
receive the result as ``Markup``. No web framework here: the report imports this module."""

from __future__ import annotations

import functools
import math
from html import escape
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

HERE = Path(__file__).resolve().parent


@functools.cache
def environment() -> jinja2.Environment:
    """The templates of ``web/templates``, autoescaped, with the filters and helpers they use."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.Undefined
    )
    env.filters["log1p"] = math.log1p
    env.globals["context_html"] = context_html
    env.globals["histogram_html"] = histogram_html
    return env


def stylesheet() -> str:
    """The pages' CSS (the static report inlines it: one self-contained file)."""
    return (HERE / "static" / "style.css").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1 << 16)
def _token_text(tok: str) -> str:
    """A token's text as HTML (a token recurs on every page: escaped once)."""
    return escape(tok).replace("\n", "⏎")


@functools.lru_cache(maxsize=1 << 14)
def _value(a: float) -> str:
    return f"{a:.3g}"


def context_html(c: dict[str, Any], scale: float) -> Markup:
    """One context (as ``queries._context`` gives it): each token a span whose background is as
    strong as its activation relative to ``scale``, its value in ``title`` and ``data-act``; the
    peak token underlined."""
    parts = [f'<div class="ctx"><span class="note">{c["activation"]:.3g}</span>']
    peak = c["peak"] if c["kind"] != "random" else -1
    for i, (tok, a) in enumerate(c["tokens"]):
        cls = "tok peak" if i == peak else "tok"
        style = ""
        if a > 0:
            alpha = min(1.0, a / scale) if scale > 0 else 1.0
            style = f' style="background:rgba(255,120,40,{alpha:.2f})"'
        value, text = _value(a), _token_text(tok)
        parts.append(f'<span class="{cls}"{style} title="{value}" data-act="{value}">{text}</span>')
    parts.append("</div>")
    return Markup("".join(parts))


def histogram_html(h: dict[str, Any]) -> Markup:
    """A feature's activation histogram (``{"counts": [...], "edges": [...]}``, as
    ``queries.feature`` gives it) as an SVG bar per bin from the first to the last non-empty one,
    heights log(1 + count) scaled to 2..60, each bin's range and count in its ``title``; "never
    fires" when every count is 0. Written out here rather than in a template: a Jinja loop over
    the bins was a tenth of a feature page."""
    counts, edges = h["counts"], h["edges"]
    nz = [i for i, c in enumerate(counts) if c > 0]
    if not nz:
        return Markup('<p class="note">never fires</p>')
    lo, hi = nz[0], nz[-1]
    top = math.log1p(max(counts))
    width = (hi - lo + 1) * 8
    parts = [f'\n<svg class="hist" viewBox="0 0 {width} 60" preserveAspectRatio="none" role="img" '
             'aria-label="activation histogram">']  # fmt: skip
    for i in range(lo, hi + 1):
        hgt = 0 if counts[i] == 0 else 2 + 58 * math.log1p(counts[i]) / top
        a, b = (f"{edges[i]:.3g}", f"{edges[i + 1]:.3g}") if edges else (i, i + 1)
        parts.append(f'\n<rect x="{(i - lo) * 8}" y="{60 - hgt}" width="7" height="{hgt}"><title>{a}–{b}: '
                     f"{counts[i]}</title></rect>")  # fmt: skip
    axis = f"{edges[lo]:.3g} … {edges[hi + 1]:.3g} (log bins, log counts)" if edges else ""
    parts.append(f'\n</svg>\n<p class="note axis">{axis}</p>')
    return Markup("".join(parts))
