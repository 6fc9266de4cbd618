"""Feature neighbourhoods by decoder cosine, within one dictionary and across the sizes of a run."""

from __future__ import annotations

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
