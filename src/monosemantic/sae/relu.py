"""The ReLU sparse autoencoder of Anthropic's Scaling Monosemanticity (April 2024 recipe).

    f(x) = ReLU(W_enc x + b_enc)                       (n,)
    x̂    = b_dec + W_dec f                             (d,)
    L    = ‖x − x̂‖² + λ Σ_i f_i ‖W_dec[:, i]‖₂

Decoder columns are free in norm (the penalty weights each feature by its decoder norm instead),
W_enc starts as W_decᵀ and both biases start at zero.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn


class ForwardOutput(NamedTuple):
    pre_acts: Tensor
    """(..., n) encoder pre-activations W_enc x + b_enc."""
    feats: Tensor
    """(..., n) feature activations f(x) ≥ 0."""
    recon: Tensor
    """(..., d) reconstruction x̂."""


class LossOutput(NamedTuple):
    loss: Tensor
    """() total loss: mse + l1_coeff · sparsity."""
    mse: Tensor
    """() squared error summed over d, averaged over the batch."""
    sparsity: Tensor
    """() Σ_i f_i ‖W_dec[:, i]‖₂, averaged over the batch."""


class ReluSAE(nn.Module):
    def __init__(self, d_model: int, n_features: int) -> None:
        super().__init__()
        self.d_model, self.n_features = d_model, n_features
        self.W_enc = nn.Parameter(torch.empty(n_features, d_model))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.empty(d_model, n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_model))

    @torch.no_grad()
    def initialize(self, generator: torch.Generator, dec_norm: float = 0.1) -> None:
        """Random decoder directions of norm ``dec_norm``, W_enc = W_decᵀ, zero biases."""
        w = torch.randn(self.d_model, self.n_features, generator=generator)
        self.W_dec.copy_(w / w.norm(dim=0, keepdim=True) * dec_norm)
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (..., d) -> (pre_acts, feats), each (..., n)."""
        pre = x @ self.W_enc.T + self.b_enc
        return pre, torch.relu(pre)

    def decode(self, feats: Tensor) -> Tensor:
        """feats (..., n) -> x̂ (..., d)."""
        return feats @ self.W_dec.T + self.b_dec

    def forward(self, x: Tensor) -> ForwardOutput:
        pre, feats = self.encode(x)
        return ForwardOutput(pre, feats, self.decode(feats))

    def decoder_norms(self) -> Tensor:
        """(n,) ‖W_dec[:, i]‖₂."""
        return self.W_dec.norm(dim=0)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make a dictionary trained on ``scale·x`` act on raw ``x`` with identical features:
        f(x) = ReLU(W_enc (s x) + b_enc) and x̂ = (W_dec f + b_dec) / s."""
        self.W_enc.mul_(scale)
        self.W_dec.div_(scale)
        self.b_dec.div_(scale)


def relu_sae_loss(
    x: Tensor, out: ForwardOutput, decoder_norms: Tensor, l1_coeff: float | Tensor
) -> LossOutput:
    """Anthropic's loss for a batch x (B, d): ‖x − x̂‖² + λ Σ_i f_i ‖W_dec[:, i]‖₂, batch-averaged."""
    mse = (out.recon - x).pow(2).sum(dim=-1).mean()
    sparsity = (out.feats * decoder_norms).sum(dim=-1).mean()
    return LossOutput(mse + l1_coeff * sparsity, mse, sparsity)
