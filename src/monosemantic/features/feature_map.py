"""A 2-D map of a dictionary's features: UMAP of the decoder directions (cosine metric), coloured
by firing frequency or by catalog label, as a PNG."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path


def embed_2d(directions: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, d) decoder directions -> (n, 2) UMAP coordinates (cosine metric)."""
    try:
        import umap
    except ImportError as e:
        raise UserError("the feature map needs umap-learn: pip install umap-learn") from e
    n = len(directions)
    reducer = umap.UMAP(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(directions))


def cached_embed_2d(directions: np.ndarray, cache_dir: Path, seed: int = 0, write: bool = True) -> np.ndarray:
    """``embed_2d``, computed once per set of directions: the coordinates are kept in
    ``cache_dir`` under a hash of the directions and the seed (UMAP of 16k features takes over a
    minute; a report rebuilt after ``explain`` or ``catalog`` reuses them). With ``write`` False
    the cache is only read (the web server never writes into a run)."""
    data = np.ascontiguousarray(directions, dtype=np.float32)
    key = hashlib.sha256(data.tobytes() + f"{data.shape}/{seed}".encode()).hexdigest()[:20]
    path = cache_dir / f"umap-{key}.npy"
    if path.is_file():
        try:
            coords = np.load(path)
            if coords.shape == (len(data), 2):
                return np.asarray(coords)
        except (OSError, ValueError):
            pass  # a damaged cache is recomputed
    coords = embed_2d(data, seed)
    if not write:
        return coords
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, coords)
    return coords


def plot_map(
    coords: np.ndarray,
    freq: np.ndarray,
    path: Path,
    title: str,
    labels: dict[int, str] | None = None,
) -> Path:
    """Scatter of the features, coloured by log10 firing frequency (dead features grey); features
    with a catalog label are drawn on top, coloured by label."""
    fig = Figure(figsize=(8, 7), dpi=110)
    ax = fig.add_subplot()
    live = freq > 0
    ax.scatter(coords[~live, 0], coords[~live, 1], s=2, c="#cccccc", label="dead", linewidths=0)
    sc = ax.scatter(
        coords[live, 0], coords[live, 1], s=3, c=np.log10(freq[live]), cmap="viridis", linewidths=0
    )
    fig.colorbar(sc, ax=ax, label="log10 firing frequency")
    for i, label in enumerate(sorted(set((labels or {}).values()))):
        ids = [j for j, lab in (labels or {}).items() if lab == label]
        ax.scatter(
            coords[ids, 0],
            coords[ids, 1],
            s=28,
            marker="*",
            color=f"C{i % 10}",
            label=label,
            edgecolors="black",
            linewidths=0.3,
        )
    if labels:
        ax.legend(fontsize=7, loc="best", markerscale=1.5)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
