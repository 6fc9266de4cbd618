"""The ReLU dictionary's training forward and backward in one autograd function, over the columns
that fired in the batch only.

A feature that fired on no token of the batch has f = 0 in every row, so it adds nothing to x̂, to
the penalty or to any gradient (its gradients are exactly 0 in the plain autograd step too). In a
ReLU dictionary most features are soon silent on any one batch of 512 (52% of 16,384 never fired on
the demo's 20k held-out tokens after 10 steps, docs/benchmarks.md), so four of the step's five
(B, d) x (d, n) matmuls (decoder forward, the gradients of f, W_dec and W_enc) run over the n_a
columns that fired, and only the encoder forward over all n. It also computes the decoder norms
once, applies ReLU's derivative and the penalty's gradient in one pass over (B, n_a), and writes
each weight gradient in its parameter's own layout (autograd's transposed matmuls copy them).

Shapes: x (B, d), W_enc (n, d), b_enc (n,), W_dec (d, n), b_dec (d,). The plain autograd step
(``ReluSAE.fast = False``) is the reference; tests/test_sae.py checks that they agree.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

COMPACT_BELOW = 0.9
"""Gather the fired columns when fewer than this fraction of them fired; above it the gathers
(of W_dec and f, and the scatter of the gradients back) cost more than the smaller matmuls save."""


class ReluStep(NamedTuple):
    pre: Tensor
    """(B, n) pre-activations W_enc x + b_enc, without gradient."""
    feats: Tensor
    """(B, n) f = ReLU(pre), without gradient."""
    recon: Tensor
    """(B, d) x̂ = W_dec f + b_dec, with gradient."""
    penalty: Tensor
    """() Σ_i f_i‖W_dec[:, i]‖, averaged over the batch, with gradient."""


def relu_step(x: Tensor, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor) -> ReluStep:
    """The forward of a ReLU dictionary on x (B, d) whose backward reaches the four parameters through
    the fired columns alone (module docstring)."""
    pre = torch.addmm(b_enc.detach(), x, W_enc.detach().T)
    feats = torch.relu(pre)
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
        norms = torch.linalg.vector_norm(w, dim=0)  # (n_a,)
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
