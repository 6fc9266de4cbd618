"""Feature neighbourhoods by decoder cosine, within one dictionary and across the sizes of a run."""

from __future__ import annotations

import sqlite3

import torch
from torch import Tensor


def unit_directions(W_dec: Tensor) -> Tensor:
    """W_dec (d, n) -> (n, d) unit-norm decoder directions."""
    return torch.nn.functional.normalize(W_dec.T.float(), dim=1)


def nearest(
    dirs_a: Tensor, features: Tensor, dirs_b: Tensor, k: int, same: bool, batch: int = 1024
) -> tuple[Tensor, Tensor]:
    """For each of ``features`` (m,) of dictionary a, the ``k`` features of b with the largest
    decoder cosine (a feature is not its own neighbour when ``same``): (cosines, ids), each (m, k)."""
    cos_out, idx_out = [], []
    for i in range(0, len(features), batch):
        f = features[i : i + batch]
        cos = dirs_a[f] @ dirs_b.T  # (m, n_b)
        if same:
            cos[torch.arange(len(f)), f] = -2.0
        c, j = cos.topk(min(k, cos.shape[1] - int(same)), dim=1)
        cos_out.append(c)
        idx_out.append(j)
    return torch.cat(cos_out), torch.cat(idx_out)


def store_neighbors(
    con: sqlite3.Connection,
    dictionaries: dict[str, tuple[str, Tensor]],
    k_within: int = 10,
    k_across: int = 5,
) -> int:
    """Rewrite the neighbors table: for every feature of every dictionary ({name: (arch, W_dec)}),
    its ``k_within`` nearest features in the same dictionary and its ``k_across`` nearest in each
    other dictionary of the same architecture (the sizes of a run). Returns the rows written."""
    con.execute("DELETE FROM neighbors")
    dirs = {name: unit_directions(w) for name, (_, w) in dictionaries.items()}
    n_rows = 0
    for a, (arch_a, _) in dictionaries.items():
        ids = torch.arange(len(dirs[a]))
        for b, (arch_b, _) in dictionaries.items():
            if arch_b != arch_a:
                continue
            cos, idx = nearest(dirs[a], ids, dirs[b], k_within if a == b else k_across, same=a == b)
            rows = [
                (a, i, b, j, c)
                for i, (js, cs) in enumerate(zip(idx.tolist(), cos.tolist(), strict=True))
                for j, c in zip(js, cs, strict=True)
            ]
            con.executemany("INSERT INTO neighbors VALUES (?, ?, ?, ?, ?)", rows)
            n_rows += len(rows)
    return n_rows


def neighbors_of(con: sqlite3.Connection, sae: str, feature: int) -> dict[str, list[tuple[int, float]]]:
    """{dictionary: [(feature, cosine), ...]} from the neighbors table, nearest first."""
    out: dict[str, list[tuple[int, float]]] = {}
    for other_sae, other, cos in con.execute(
        "SELECT other_sae, other, cosine FROM neighbors WHERE sae = ? AND feature = ? "
        "ORDER BY other_sae, cosine DESC",
        (sae, feature),
    ):
        out.setdefault(other_sae, []).append((int(other), float(cos)))
    return out
