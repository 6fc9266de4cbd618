"""Sparse activations as lists of their nonzero entries, and the decoder that reads only those.

The decoder runs sparse (``F.embedding_bag`` over the k active columns per token); a dense
``f @ W_decᵀ`` is the reference it is tested against. Forward + backward of the decoder at B=512,
d=576, k=32 on a 2-core CPU: 12 ms sparse vs 27 ms dense at n=2048, 90 ms vs 216 ms at n=16384 (the
whole dictionary: 24 vs 38 ms, 260 vs 372 ms), and a tie at toy sizes, so TopK's ``forward`` always
runs sparse.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Active(NamedTuple):
    """The nonzero entries of a (B, n) activation matrix in row-major order (M entries)."""

    rows: Tensor
    """(M,) long, non-decreasing: the batch row of each entry."""
    cols: Tensor
    """(M,) long: the feature of each entry."""
    values: Tensor
    """(M,) the activation of each entry (≥ 0)."""

    def dense(self, batch: int, n_features: int) -> Tensor:
        """The (B, n) activation matrix, zero outside the entries."""
        zeros = self.values.new_zeros(batch, n_features)
        return zeros.index_put((self.rows, self.cols), self.values)


def sparse_decode(W_dec: Tensor, active: Active, batch: int) -> Tensor:
    """W_dec f without the bias, reading only the active columns: W_dec (d, n) -> (B, d).
    Equals ``active.dense(B, n) @ W_dec.T`` at a cost of M·d instead of B·n·d."""
    offsets = torch.searchsorted(active.rows, torch.arange(batch, device=active.rows.device))
    # embedding_bag gathers rows of its table; rows of the strided view W_dec.T are scattered over
    # memory, which made it 2-5x slower than copying the table to a contiguous block first.
    table = W_dec.T.contiguous()
    return F.embedding_bag(active.cols, table, offsets, per_sample_weights=active.values, mode="sum")


def topk_per_row(pre: Tensor, k: int) -> Active:
    """ReLU of the k largest entries of each row of pre (B, n)."""
    batch, n = pre.shape
    values, cols = pre.topk(min(k, n), dim=-1, sorted=False)
    rows = torch.arange(batch, device=pre.device).repeat_interleave(values.shape[1])
    return Active(rows, cols.reshape(-1), torch.relu(values).reshape(-1))
