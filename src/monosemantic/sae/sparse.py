"""Sparse activations as lists of their nonzero entries, and the decoder that reads only those.

The decoder runs sparse (``F.embedding_bag`` over the k active columns per token); a dense
``f @ W_decᵀ`` is the reference it is tested against. Forward + backward of the decoder at B=512,
d=576, k=32 on a 2-core CPU: 12 ms sparse vs 27 ms dense at n=2048, 90 ms vs 216 ms at n=16384 (the
whole dictionary: 24 vs 38 ms, 260 vs 372 ms), and a tie at toy sizes, so TopK's ``forward`` always
runs sparse.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

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


def sparse_decode(W_dec: Tensor, active: Active, batch: int, table: Tensor | None = None) -> Tensor:
    """W_dec f without the bias, reading only the active columns: W_dec (d, n) -> (B, d).
    Equals ``active.dense(B, n) @ W_dec.T`` at a cost of M·d instead of B·n·d. ``table``: W_dec.T
    made contiguous already (``ForwardOutput.decoder_table``), else it is copied here."""
    offsets = torch.searchsorted(active.rows, torch.arange(batch, device=active.rows.device))
    # embedding_bag gathers rows of its table; rows of the strided view W_dec.T are scattered over
    # memory, which made it 2-5x slower than copying the table to a contiguous block first.
    if table is None:
        table = W_dec.T.contiguous()
    return F.embedding_bag(active.cols, table, offsets, per_sample_weights=active.values, mode="sum")


def topk_per_row(pre: Tensor, k: int) -> Active:
    """ReLU of the k largest entries of each row of pre (B, n)."""
    batch, n = pre.shape
    values, cols = pre.topk(min(k, n), dim=-1, sorted=False)
    rows = torch.arange(batch, device=pre.device).repeat_interleave(values.shape[1])
    return Active(rows, cols.reshape(-1), torch.relu(values).reshape(-1))


def transposed_matmul(active: Active, x: Tensor, n_features: int, layout: str = "csr") -> Tensor:
    """Sᵀ x for the sparse (B, n) matrix S of ``active``'s entries and x (B, d) -> (n, d), at a cost
    of M·d instead of the dense 2·B·n·d: the encoder's weight gradient from the entries a TopK
    selection kept.

    ``layout`` (all equal up to rounding; measured at B = 512, d = 576 on the 2-core CPU, see
    docs/benchmarks.md): "csr" sorts the entries by feature into a CSR matrix of Sᵀ (fastest here
    at both k = 32 and AuxK's k = 288), "coo" lets torch coalesce a COO matrix, "index_add" gathers
    the M rows of x and adds them into place (slowest: it writes an (M, d) temporary), "dense"
    scatters into a (B, n) matrix and multiplies (the reference)."""
    batch = x.shape[0]
    if layout == "dense":
        return active.dense(batch, n_features).T @ x
    if layout == "index_add":
        return x.new_zeros(n_features, x.shape[1]).index_add_(
            0, active.cols, active.values[:, None] * x[active.rows]
        )
    with warnings.catch_warnings():  # torch warns once that its sparse CSR support is "beta"
        warnings.simplefilter("ignore", UserWarning)
        if layout == "coo":
            indices = torch.stack([active.cols, active.rows])
            coo = torch.sparse_coo_tensor(indices, active.values, (n_features, batch), check_invariants=False)
            return torch.sparse.mm(coo, x)
        order = active.cols.argsort(stable=True)
        crow = active.cols.new_zeros(n_features + 1)
        crow[1:] = torch.bincount(active.cols, minlength=n_features).cumsum(0)
        shape = (n_features, batch)
        csr = torch.sparse_csr_tensor(
            crow, active.rows[order], active.values[order], shape, check_invariants=False
        )
        return csr @ x


class EncoderEntries(torch.autograd.Function):
    """The selected entries ReLU(W_enc x + b_enc)[rows, cols], already computed without autograd,
    with the gradient of W_enc and b_enc from those M entries alone: the dense (B, n) gradient of
    the pre-activations, zero outside them, is never formed."""

    @staticmethod
    def forward(
        ctx: Any,
        values: Tensor,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        rows: Tensor,
        cols: Tensor,
        layout: str,
    ) -> Tensor:
        ctx.save_for_backward(values, x, rows, cols)
        ctx.n_features, ctx.layout = W_enc.shape[0], layout
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, x, rows, cols = ctx.saved_tensors
        g = grad * (values > 0)  # ReLU's derivative
        n = ctx.n_features
        grad_w = (
            transposed_matmul(Active(rows, cols, g), x, n, ctx.layout) if ctx.needs_input_grad[2] else None
        )
        grad_b = g.new_zeros(n).index_add_(0, cols, g) if ctx.needs_input_grad[3] else None
        return None, None, grad_w, grad_b, None, None, None


def encoder_entries(active: Active, x: Tensor, W_enc: Tensor, b_enc: Tensor, layout: str = "csr") -> Active:
    """``active`` (selected from pre-activations of x (B, d) computed without autograd, values
    ReLU'd) with values that carry the gradient of W_enc (n, d) and b_enc (n,)."""
    if not torch.is_grad_enabled() or not (W_enc.requires_grad or b_enc.requires_grad):
        return active
    values = EncoderEntries.apply(active.values, x, W_enc, b_enc, active.rows, active.cols, layout)
    return Active(active.rows, active.cols, values)


class ColumnEntries(torch.autograd.Function):
    """ReLU(W_enc x + b_enc)[:, idx], computed without autograd and zeroed outside the entries a
    selection kept, with the gradient of W_enc and b_enc from its nonzero entries: the dense layout
    of ``EncoderEntries`` over the n_a gathered columns idx, for selections that fill a large part
    of them (AuxK's k_aux over few dead columns), where Sᵀx as a dense (n_a, B) x (B, d) matmul
    costs less than the sparse one."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(values, x, idx)
        ctx.n_features = W_enc.shape[0]
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        values, x, idx = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, values, 0.0)  # ReLU's derivative, 0 outside the entries
        n = ctx.n_features
        grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_w = x.new_zeros(n, x.shape[1]).index_copy_(0, idx, g.T @ x)
        if ctx.needs_input_grad[3]:
            grad_b = g.new_zeros(n).index_copy_(0, idx, g.sum(0))
        return None, None, grad_w, grad_b, None


def column_entries(values: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor) -> Tensor:
    """``values`` (B, n_a): ReLU of the pre-activations of x (B, d) at columns idx (n_a,), zero outside
    a selection, computed without autograd -> the same, carrying the gradient of W_enc (n, d) and
    b_enc (n,) (``ColumnEntries``)."""
    if not torch.is_grad_enabled() or not (W_enc.requires_grad or b_enc.requires_grad):
        return values
    out: Tensor = ColumnEntries.apply(values, x, W_enc, b_enc, idx)
    return out
