"""The BatchTopK sparse autoencoder of Bussmann et al., *BatchTopK Sparse Autoencoders* (2024).

    training:  f = ReLU of the k·B largest pre-activations over the whole (B, n) batch
    inference: f = pre · 1[pre > θ] · 1[pre > 0], per token, with one global threshold θ

Tokens thus share a budget of k·B features (k on average, more for rich tokens); at inference a
token cannot see its batch, so the threshold stands in for the batch's cut-off. Everything else
(unit-norm decoder, AuxK, sparse decoder) is the TopK dictionary's.

Threshold rule: after each optimizer step θ moves towards the smallest positive activation the
batch kept, by an exponential moving average with decay ``threshold_decay`` (memory ≈ 100 steps),
the paper's "average minimum positive activation across batches". θ < 0 means "not estimated
yet": the first batch sets it, and until then inference is a plain ReLU.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from monosemantic.sae.base import ForwardOutput
from monosemantic.sae.sparse import Active
from monosemantic.sae.topk import TopKSAE


class BatchTopKSAE(TopKSAE):
    arch = "batchtopk"
    feature_dims = {**TopKSAE.feature_dims, "threshold": None}
    threshold_decay: ClassVar[float] = 0.99
    threshold: Tensor

    def __init__(
        self, d_model: int, n_features: int, k: int = 32, k_aux: int = 0, aux_coeff: float = 1 / 32
    ) -> None:
        super().__init__(d_model, n_features, k=k, k_aux=k_aux, aux_coeff=aux_coeff)
        self.register_buffer("threshold", torch.tensor(-1.0))

    @torch.no_grad()
    def initialize(self, generator: torch.Generator, dec_norm: float = 1.0, enc_norm: float = 0.0) -> None:
        super().initialize(generator, dec_norm, enc_norm)
        self.threshold.fill_(-1.0)

    def select(self, pre: Tensor) -> Active:
        """Training: the k·B largest entries of pre (B, n) (over every slice of a split dictionary);
        eval: the entries above θ and 0."""
        n = pre.shape[1]
        if self.training:
            flat = pre.reshape(1, -1)
            # sorted flat indices are row-major, the order the sparse decoder reads
            idx = self.collectives.top_k(flat, self.k * pre.shape[0]).cols.sort().values
            return Active(idx // n, idx % n, torch.relu(flat[0, idx]))
        rows, cols = ((pre > self.threshold) & (pre > 0)).nonzero(as_tuple=True)
        return Active(rows, cols, pre[rows, cols])

    @torch.no_grad()
    def after_optimizer_step(self, out: ForwardOutput) -> None:
        """Renormalise the decoder, then fold this batch's smallest kept activation (over every
        slice of a split dictionary) into θ."""
        super().after_optimizer_step(out)
        feats = out.feats.detach()
        smallest = self.collectives.min(feats.masked_fill(feats <= 0, float("inf")).amin())
        moved = torch.where(
            self.threshold < 0, smallest, torch.lerp(self.threshold, smallest, 1 - self.threshold_decay)
        )
        # tensor ops rather than Python branches keep this free of device synchronisation
        self.threshold.copy_(torch.where(torch.isfinite(smallest), moved, self.threshold))
