"""The one place that saves matplotlib figures, and the axis formatting the figures share.

Figures are built on a bare ``matplotlib.figure.Figure`` (no pyplot: no global state, no GUI
backend, safe in worker processes) and written here atomically as PNGs at one resolution, so a
report never links a half-written image."""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from monosemantic.fsio import atomic_path

DPI = 110
"""Resolution of every saved figure, in dots per inch (a 11-inch-wide figure is 1210 pixels)."""


def save_png(fig: Figure, path: Path, *, crop: bool = False) -> str:
    """Write ``fig`` atomically as a PNG at ``path`` (folders created) and return the file's name,
    which is its link from a page in the same folder.

    ``crop=False`` lays the subplots out to fit their labels (``tight_layout``) on the figure's own
    canvas; ``crop=True`` instead trims the canvas to what is drawn (``bbox_inches="tight"``), for
    figures whose colorbar or legend reaches outside the axes. Raises UserError when the disk is
    full (from ``fsio.atomic_path``)."""
    if not crop:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight" if crop else None)
    return path.name


def plain_log_ticks(axis: Axis) -> None:
    """Label a log axis with plain numbers (0.4, 300) instead of powers of ten (4×10⁻¹); minor
    ticks at 2, 3, 5 × 10^k get labels only when the axis spans at most two decades."""

    def minor(v: float, _: object) -> str:
        lo, hi = sorted(axis.get_view_interval())
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6)
        return f"{v:g}" if mantissa in (2, 3, 5) and hi / lo <= 100 else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))
