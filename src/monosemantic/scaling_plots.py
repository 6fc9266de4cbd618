"""Figures of a scaling sweep (``scaling/``): loss against compute with the frontier, the IsoFLOP
profiles, and N_opt, S_opt, LR_opt against compute with their fitted power laws. Log axes
throughout; compute in training FLOPs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from monosemantic.plots import save_png
from monosemantic.scaling import load_law


def _law_label(name: str, law: dict[str, Any]) -> str:
    lo, hi = law["ci"]
    ci = f" [{lo:.2f}, {hi:.2f}]" if np.isfinite(lo) else ""
    return f"{name} ∝ C^{law['exponent']:.2f}{ci}, R² {law['r2']:.2f}"


def plot_loss_vs_compute(rows: list[dict[str, Any]], fits: dict[str, Any], path: Path) -> str:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    sizes = np.array([r["n_features"] for r in rows])
    sc = ax.scatter(
        [r["flops"] for r in rows],
        [r["loss"] for r in rows],
        c=np.log2(sizes),
        cmap="viridis",
        s=22,
        alpha=0.8,
    )
    cbar = fig.colorbar(sc, ax=ax)
    cbar.set_label("features (log₂)")
    lo, hi = fits["flops_range"]
    c = np.geomspace(lo / 1.5, hi * 1.5, 50)
    law = fits["laws"]["loss_opt"]
    ax.plot(c, load_law(law)(c), "k--", label=_law_label("L_opt", law))
    ax.plot([o["flops"] for o in fits["levels"]], [o["loss_opt"] for o in fits["levels"]], "ko", ms=5)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="training compute C (FLOPs)",
        ylabel="held-out loss (MSE + λ·sparsity)",
    )
    ax.set_title("Loss vs compute: every run, and the loss-optimal frontier")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_isoflops(rows: list[dict[str, Any]], fits: dict[str, Any], path: Path) -> str:
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["plasma"]
    levels = sorted({r["level"] for r in rows})
    for i, (level, opt) in enumerate(zip(levels, fits["levels"], strict=False)):
        base = sorted(
            (r for r in rows if r["level"] == level and r["phase"] == "size"), key=lambda r: r["n_features"]
        )
        color = cmap(i / max(len(levels) - 1, 1) * 0.85)
        ax.plot(
            [r["n_features"] for r in base],
            [r["loss"] for r in base],
            "o-",
            color=color,
            label=f"C = {opt['flops']:.2g} FLOPs",
        )
        ax.plot([opt["n_opt"]], [opt["loss_opt"]], "*", color=color, ms=12, mec="k")
    ax.set(xscale="log", yscale="log", xlabel="dictionary size n (features)", ylabel="held-out loss")
    ax.set_title("IsoFLOP profiles (★ fitted optimum)")
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_optima(fits: dict[str, Any], path: Path) -> str:
    fig = Figure(figsize=(12, 3.8))
    c = np.array([o["flops"] for o in fits["levels"]])
    grid = np.geomspace(c.min() / 1.5, c.max() * 1.5, 50)
    panels = [
        ("n_opt", "N_opt", "features"),
        ("steps_opt", "S_opt", "training steps"),
        ("lr_opt", "LR_opt", "learning rate"),
    ]
    for i, (key, name, unit) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        law = fits["laws"][key]
        ax.plot(c, [o[key] for o in fits["levels"]], "o", color="C0", label="per-level optimum")
        ax.plot(grid, load_law(law)(grid), "-", color="C3", label=_law_label(name, law))
        ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel=f"{name} ({unit})")
        ax.legend(fontsize=7)
    fig.suptitle("Loss-optimal size, steps and learning rate vs compute")
    return save_png(fig, path)


def scaling_figures(rows: list[dict[str, Any]], fits: dict[str, Any], out_dir: Path) -> list[tuple[str, str]]:
    """(title, PNG name) of every figure, written into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        ("Scaling: loss vs compute", plot_loss_vs_compute(rows, fits, out_dir / "scaling_loss.png")),
        ("Scaling: IsoFLOP profiles", plot_isoflops(rows, fits, out_dir / "scaling_isoflop.png")),
        ("Scaling: optimal size, steps, learning rate", plot_optima(fits, out_dir / "scaling_optima.png")),
    ]
