"""The ReLU sparse autoencoder of Anthropic's Scaling Monosemanticity (April 2024 recipe).

    f(x) = ReLU(W_enc x + b_enc)                       (n,)
    x̂    = b_dec + W_dec f                             (d,)
    L    = ‖x − x̂‖² + λ Σ_i f_i ‖W_dec[:, i]‖₂

Decoder columns are free in norm (the penalty weights each feature by its decoder norm instead),
W_enc starts as W_decᵀ and both biases start at zero.

Training runs ``sae/relu_step.py`` (one autograd function over the columns that fired in the batch,
or over the nonzero activations as sparse products once they are few) unless ``ReluSAE.fast`` is
False, which runs the plain autograd reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monosemantic.sae.base import ForwardOutput, LossContext, LossOutput, SparseAutoencoder, mse_loss
from monosemantic.sae.collectives import LOCAL, Collectives
from monosemantic.sae.relu_step import relu_step


class ReluSAE(SparseAutoencoder):
    """``fast`` (default) trains through ``relu_step`` where autograd is on and the dictionary is
    whole; False runs the plain autograd reference. They agree to rounding (tests/test_sae.py)."""

    arch = "relu"
    fast: bool = True
    sparse_below: float | None = None
    """The fast step's switch to sparse (CSR) products: below this fraction of nonzero activations
    (None: ``relu_step.SPARSE_BELOW`` on the CPU, never elsewhere; 0: never; above 1: always)."""

    def activation(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def forward(self, x: Tensor) -> ForwardOutput:
        # the fast step gives the parameters their gradient, not x: a caller differentiating with
        # respect to the input (attribution) gets the plain autograd forward
        if not (self.fast and torch.is_grad_enabled() and self.collectives is LOCAL) or x.requires_grad:
            return super().forward(x)
        step = relu_step(
            x.reshape(-1, self.d_model), self.W_enc, self.b_enc, self.W_dec, self.b_dec, self.sparse_below
        )
        n = self.n_features
        pre, feats = step.pre.view(*x.shape[:-1], n), step.feats.view(*x.shape[:-1], n)
        return ForwardOutput(pre, feats, step.recon.view_as(x), active=step.active, penalty=step.penalty)

    def loss(self, x: Tensor, out: ForwardOutput, ctx: LossContext) -> LossOutput:
        if out.penalty is not None:
            mse = mse_loss(x, out.recon)
            zero = torch.zeros((), device=x.device)
            return LossOutput(mse + ctx.sparsity_coeff * out.penalty, mse, out.penalty, zero)
        return relu_sae_loss(x, out, self.decoder_norms(), ctx.sparsity_coeff, self.collectives)


def relu_sae_loss(
    x: Tensor,
    out: ForwardOutput,
    decoder_norms: Tensor,
    l1_coeff: float | Tensor,
    collectives: Collectives = LOCAL,
) -> LossOutput:
    """Anthropic's loss for a batch x (B, d): ‖x − x̂‖² + λ Σ_i f_i ‖W_dec[:, i]‖₂, batch-averaged.
    With a slice of the features (``collectives`` over ranks), out.recon is the whole dictionary's
    and the penalty's sum over features runs over every slice."""
    mse = mse_loss(x, out.recon)
    # a matrix-vector product: no (B, n) temporary, forward or backward (f ≥ 0, so no abs)
    sparsity = collectives.sum((out.feats.reshape(-1, out.feats.shape[-1]) @ decoder_norms).mean())
    return LossOutput(mse + l1_coeff * sparsity, mse, sparsity, torch.zeros((), device=x.device))
