"""The ReLU dictionary's training forward and backward in one autograd function, over the columns
that fired in the batch only, or over the nonzero activations only once they are few.

A feature that fired on no token of the batch has f = 0 in every row, so it adds nothing to x̂, to
the penalty or to any gradient (its gradients are exactly 0 in the plain autograd step too). In a
ReLU dictionary most features are soon silent on any one batch of 512 (52% of 16,384 never fired on
the demo's 20k held-out tokens after 10 steps, docs/bench.md), so four of the step's five
(B, d) x (d, n) matmuls (decoder forward, the gradients of f, W_dec and W_enc) run over the n_a
columns that fired, and only the encoder forward over all n. It also computes the decoder norms
once, applies ReLU's derivative and the penalty's gradient in one pass over (B, n_a), and writes
each weight gradient in its parameter's own layout (autograd's transposed matmuls copy them; the
sparse step below writes W_dec's as a transposed view, which autograd copies once).

Sparse step: within a few dozen steps fewer than a fifth of the (B, n) activations are nonzero
(L0 < 0.2 n), and from then on the same four products are cheaper over the M = B·L0 nonzeros
alone: x̂ = f W_decᵀ as a weighted sum of table rows (``F.embedding_bag``), the gradient of f only
where ReLU passes it (a sampled product, ``torch.sparse.sampled_addmm``), and the weight gradients
as CSR × dense products (MKL's sparse BLAS on the CPU) over the transposed pattern. This is TopK's
sparse backward (Gao et al. 2024; sparsify) applied to a ReLU dictionary whose sparsity is learned
rather than fixed. Step time, dense / sparse, 2 threads, on the demo store
(bench/relu_sparse_crossover.py): at 2,048 features 1.64x at 5-10% nonzero, 1.44x at 10-15%,
1.14x at 15-20%, 0.99x at 20-25%, 0.87x at 25-30%; at 16,384 features 1.63x at 0-5% against the
column-gathered step.

Shapes: x (B, d), W_enc (n, d), b_enc (n,), W_dec (d, n), b_dec (d,). The plain autograd step
(``ReluSAE.fast = False``) is the reference; tests/test_sae.py checks that both paths agree with it.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from monosemantic.sae.base import column_dots
from monosemantic.sae.sparse import Active

COMPACT_BELOW = 0.9
"""Gather the fired columns when fewer than this fraction of them fired; above it the gathers
(of W_dec and f, and the scatter of the gradients back) cost more than the smaller matmuls save."""

SPARSE_BELOW = 0.2
"""On the CPU, run the four matmuls after the encoder as sparse (CSR) products when fewer than this
fraction of the (B, n) activations are nonzero: where the sparse step breaks even with the dense
one (module docstring). cuSPARSE is not measured, so other devices keep the dense step."""


class ReluStep(NamedTuple):
    pre: Tensor
    """(B, n) pre-activations W_enc x + b_enc, without gradient."""
    feats: Tensor
    """(B, n) f = ReLU(pre), without gradient."""
    recon: Tensor
    """(B, d) x̂ = W_dec f + b_dec, with gradient."""
    penalty: Tensor
    """() Σ_i f_i‖W_dec[:, i]‖, averaged over the batch, with gradient."""
    active: Active | None = None
    """The M nonzero entries of feats, without gradient, where the step ran sparse (the trainer's
    firing counts read them instead of the dense (B, n) matrix); None otherwise."""


DENSITY_SAMPLE_ROWS = 64
"""Rows of the batch whose nonzero fraction decides between the dense and the sparse step."""


def relu_step(
    x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, sparse_below: float | None = None
) -> ReluStep:
    """The forward of a ReLU dictionary on x (B, d) whose backward reaches the four parameters through
    the fired columns alone, or through the nonzero activations alone where fewer than
    ``sparse_below`` (default ``SPARSE_BELOW`` on the CPU, 0 elsewhere: cuSPARSE is not measured) of
    them are nonzero (module docstring)."""
    pre = torch.addmm(b_enc.detach(), x, W_enc.detach().T)
    feats = torch.relu(pre)
    if sparse_below is None:
        sparse_below = SPARSE_BELOW if x.device.type == "cpu" else 0.0
    if pre.dtype not in (torch.float32, torch.float64):
        sparse_below = 0.0  # the CPU's sampled CSR product has no float16 / bfloat16 kernel
    # the density from the first rows only: a misjudged step near the threshold costs about the
    # same either way, and counting all B·n entries would cost a tenth of the sparse step's saving
    # (a comparison and a sum: count_nonzero is 6x slower)
    sample = feats[:DENSITY_SAMPLE_ROWS]
    if sparse_below > 0 and int((sample > 0).sum()) < sparse_below * sample.numel():
        f, rows = _to_csr(feats)
        recon, penalty = _SparseReluStep.apply(f, rows, x, W_enc, b_enc, W_dec, b_dec)
        return ReluStep(pre, feats, recon, penalty, Active(rows, f.col_indices().long(), f.values()))
    recon, penalty = _ReluStep.apply(feats, x, W_enc, b_enc, W_dec, b_dec)
    return ReluStep(pre, feats, recon, penalty)


class _ReluStep(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, feats: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor
    ) -> tuple[Tensor, Tensor]:
        n = feats.shape[1]
        fired = (feats.amax(0) > 0).nonzero().flatten()
        idx: Tensor | None = fired if fired.numel() < COMPACT_BELOW * n else None
        f = feats if idx is None else feats.index_select(1, idx)  # (B, n_a)
        w = W_dec.detach() if idx is None else W_dec.detach().index_select(1, idx)  # (d, n_a)
        norms = column_dots(w, w).sqrt_()  # (n_a,); norm(dim=0) strides: 1.1 ms against 0.1 at 576 x 2,048
        recon = torch.addmm(b_dec.detach(), f, w.T)
        penalty = (f @ norms).mean()
        ctx.save_for_backward(f, x, w, norms, idx)
        ctx.n = n
        return recon, penalty

    @staticmethod
    def backward(ctx: Any, grad_recon: Tensor, grad_penalty: Tensor) -> tuple[Tensor | None, ...]:
        f, x, w, norms, idx = ctx.saved_tensors
        batch, n = f.shape[0], ctx.n
        scale = grad_penalty / batch  # d(penalty)/d(f_bi) = ‖W_dec,i‖ / B
        # dL/df = g W_dec + scale·‖W_dec‖, then ReLU's derivative: one pass after the matmul
        grad_f = torch.addmm(norms * scale, grad_recon, w)
        grad_pre = torch.ops.aten.threshold_backward(grad_f, f, 0.0)
        grad_w_enc = grad_pre.T @ x  # (n_a, d)
        grad_b_enc = grad_pre.sum(0)
        # dL/dW_dec = g fᵀ + scale·(Σ_b f_bi)·W_dec,i/‖W_dec,i‖ (the norm's gradient; 0 at a zero column)
        along = torch.where(norms > 0, f.sum(0) * scale / norms, 0.0)
        grad_w_dec = torch.addcmul(grad_recon.T @ f, w, along)  # (d, n_a)
        if idx is not None:
            grad_w_enc = grad_w_enc.new_zeros(n, grad_w_enc.shape[1]).index_copy_(0, idx, grad_w_enc)
            grad_b_enc = grad_b_enc.new_zeros(n).index_copy_(0, idx, grad_b_enc)
            grad_w_dec = grad_w_dec.new_zeros(grad_w_dec.shape[0], n).index_copy_(1, idx, grad_w_dec)
        return None, None, grad_w_enc, grad_b_enc, grad_w_dec, grad_recon.sum(0)


def _to_csr(feats: Tensor) -> tuple[Tensor, Tensor]:
    """The nonzero entries of feats (B, n) as a CSR matrix, with 32-bit indices where they fit
    (MKL's sampled product and the sort of the transpose are faster on them), and the (M,) int64
    row of each entry; 15% faster than ``Tensor.to_sparse_csr`` on this CPU, which also warns that
    CSR support is in beta (these products are tested here)."""
    batch, n = feats.shape
    flat = feats.reshape(-1)
    at = flat.nonzero().squeeze(1)  # (M,) row-major positions
    rows = at // n
    counts = torch.bincount(rows, minlength=batch)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    cols = at % n
    if flat.numel() < 2**31:
        crow, cols = crow.int(), cols.int()
    return _csr(crow, cols, flat.index_select(0, at), (batch, n)), rows


def _csr(crow: Tensor, cols: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A CSR matrix from indices this module built sorted (not checked again); without torch's
    warning that CSR support is in beta: the products used here are tested against the reference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, size, check_invariants=False)


class _SparseReluStep(torch.autograd.Function):
    """The same step with f held as a CSR matrix (M nonzeros): the decoder forward, the gradient of
    f (only at the nonzeros, where ReLU passes it: a sampled product), and the gradients of W_enc
    and W_dec are sparse × dense products costing M·d each instead of B·n·d."""

    @staticmethod
    def forward(
        ctx: Any,
        f: Tensor,
        rows: Tensor,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
    ) -> tuple[Tensor, Tensor]:
        # f: the (B, n) activations as CSR and rows the (M,) row of each of its entries (``_to_csr``)
        table = W_dec.detach().T.contiguous()  # (n, d): the layout every sparse product reads
        norms = torch.linalg.vector_norm(table, dim=1)  # (n,)
        cols, values = f.col_indices(), f.values()
        # x̂ row by row from the rows of the table (2x MKL's CSR product at 16% nonzero, 2 threads)
        recon = F.embedding_bag(cols, table, f.crow_indices()[:-1], per_sample_weights=values, mode="sum")
        recon += b_dec.detach()
        penalty = (values @ norms.index_select(0, cols)) / f.shape[0]
        ctx.save_for_backward(f, rows, x, table, norms)
        return recon, penalty

    @staticmethod
    def backward(ctx: Any, grad_recon: Tensor, grad_penalty: Tensor) -> tuple[Tensor | None, ...]:
        f, rows, x, table, norms = ctx.saved_tensors
        (batch, n), cols, values = f.shape, f.col_indices(), f.values()
        scale = grad_penalty / batch
        # dL/df at the nonzeros (ReLU's derivative is 1 there, 0 elsewhere): (g W_dec)_bi + scale·‖W_dec,i‖
        grad_f = torch.sparse.sampled_addmm(f, grad_recon, table.T, beta=0.0)
        grad_values = grad_f.values().add_(norms.index_select(0, cols) * scale)
        # the (n, B) transpose's pattern: the entries in column order (a stable sort keeps rows ascending)
        perm = torch.argsort(cols, stable=True)
        counts = torch.bincount(cols, minlength=n)
        crow_t = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(cols.dtype)
        rows_t = rows.index_select(0, perm).to(cols.dtype)

        def transposed(v: Tensor) -> Tensor:
            return _csr(crow_t, rows_t, v.index_select(0, perm), (n, batch))

        grad_w_enc = transposed(grad_values) @ x  # (n, d)
        grad_b_enc = grad_values.new_zeros(n).index_add_(0, cols, grad_values)
        # dL/dW_dec = g fᵀ + scale·(Σ_b f_bi)·W_dec,i/‖W_dec,i‖ (the norm's gradient; 0 at a zero column),
        # formed as its (n, d) transpose, the layout the sparse product writes
        column_sums = values.new_zeros(n).index_add_(0, cols, values)
        along = torch.where(norms > 0, column_sums * scale / norms, 0.0)
        grad_w_dec_t = (transposed(values) @ grad_recon).addcmul_(table, along[:, None])
        return None, None, None, grad_w_enc, grad_b_enc, grad_w_dec_t.T, grad_recon.sum(0)
