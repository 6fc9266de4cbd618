"""The Matryoshka BatchTopK sparse autoencoder of Bussmann et al., *Learning Multi-Level Features
with Matryoshka Sparse Autoencoders* (2025).

The features form consecutive groups of sizes s_1, ..., s_L (``group_sizes``); prefix j holds the
first m_j = s_1 + ... + s_j features. Features are chosen as in BatchTopK (the k·B largest
pre-activations of the whole batch), and every prefix must reconstruct the input on its own:

    x̂_j = b_dec + Σ_{i < m_j} f_i W_dec[:, i]           (d,), x̂_L = x̂ the whole dictionary's
    L   = (1/L) Σ_j ‖x − x̂_j‖² + α · Var(x) · AuxK      (AuxK as TopK's, on the whole residual)

so the early features cannot lean on later ones: a general feature ("starts with S") must keep
its whole meaning instead of ceding tokens to specific ones ("snake"), which is what the paper
found cuts feature absorption. The first m_j features are a dictionary of their own, the one a
separate training at width m_j would have been: training ``--sizes 512,2048,16384`` yields all
three from one run (``views``). At inference, one global threshold θ (BatchTopK's) decides each
feature on its own, so a prefix encodes exactly as the first m_j features of the whole.

The mean over levels (rather than SAELens's sum) keeps the loss on the MSE's scale, as
dictionary_learning's equal group weights do, so AuxK keeps BatchTopK's balance. Each feature
carries its level (``level``, a buffer) so that a feature-parallel slice, which holds some
contiguous range of features, knows which prefixes its features belong to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from monosemantic.sae.base import ForwardOutput, LossContext, LossOutput, SparseAutoencoder, mse_loss
from monosemantic.sae.batchtopk import BatchTopKSAE
from monosemantic.sae.sparse import Active, sparse_decode

if TYPE_CHECKING:
    from typing import Self

    from monosemantic.config import TrainConfig


def prefix_ends(group_sizes: Sequence[int]) -> list[int]:
    """The width of each nested prefix: the running sums of the group sizes."""
    ends, total = [], 0
    for s in group_sizes:
        total += int(s)
        ends.append(total)
    return ends


class MatryoshkaSAE(BatchTopKSAE):
    arch = "matryoshka"
    feature_dims = {**BatchTopKSAE.feature_dims, "level": 0}
    level: Tensor

    def __init__(
        self,
        d_model: int,
        n_features: int,
        k: int = 32,
        k_aux: int = 0,
        aux_coeff: float = 1 / 32,
        group_sizes: Sequence[int] = (),
    ) -> None:
        """``group_sizes`` (summing to ``n_features``; empty = one group, a plain BatchTopK)
        Raises ValueError for sizes that are not positive or sum to less than ``n_features``; a
        sum above it is a feature-parallel slice, whose levels come from the whole dictionary's
        state (``load_state_dict``)."""
        super().__init__(d_model, n_features, k=k, k_aux=k_aux, aux_coeff=aux_coeff)
        self.group_sizes = [int(s) for s in group_sizes] or [n_features]
        if min(self.group_sizes) <= 0 or sum(self.group_sizes) < n_features:
            raise ValueError(f"group sizes {self.group_sizes} must be positive and sum to {n_features}")
        if sum(self.group_sizes) == n_features:
            sizes = torch.tensor(self.group_sizes)
            level = torch.repeat_interleave(torch.arange(len(self.group_sizes)), sizes)
        else:
            level = torch.zeros(n_features, dtype=torch.long)
        self.register_buffer("level", level)

    @classmethod
    def from_config(cls, d_model: int, n_features: int, cfg: TrainConfig) -> Self:
        groups = cfg.group_sizes
        return cls(d_model, n_features, k=cfg.k, k_aux=cfg.k_aux, aux_coeff=cfg.aux_coeff, group_sizes=groups)

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "group_sizes": list(self.group_sizes)}

    @classmethod
    def trained_sizes(cls, sizes: list[int]) -> list[int]:
        """One dictionary, the largest: the smaller sizes are its prefixes."""
        return [max(sizes)]

    def views(self, sizes: list[int]) -> dict[int, SparseAutoencoder]:
        """This dictionary's prefix at each of ``sizes`` (each the end of a group)."""
        return {n: self.prefix(n) for n in sorted(sizes)}

    def prefix(self, n: int) -> MatryoshkaSAE:
        """A copy of the first ``n`` features (a prefix width: the end of a group), a dictionary of
        its own that encodes as they do in the whole.

        Raises ValueError where n is not the end of a group."""
        ends = prefix_ends(self.group_sizes)
        if n not in ends:
            raise ValueError(f"{n} is not one of the prefix widths {ends}")
        groups = self.group_sizes[: ends.index(n) + 1]
        out = MatryoshkaSAE(self.d_model, n, self.k, self.k_aux, self.aux_coeff, groups)
        state = {
            name: t if dim is None else t.narrow(dim, 0, n)
            for name, t in self.state_dict().items()
            for dim in [self.feature_dims[name]]
        }
        out.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return out.to(self.W_dec.device).train(self.training)

    def level_reconstructions(self, out: ForwardOutput, batch: int) -> list[Tensor]:
        """x̂_j of every prefix but the last (whose x̂ is ``out.recon``): (B, d) each, from the
        active entries of ``out``; over every slice of a split dictionary."""
        active = out.active
        if active is None:  # a caller's own ForwardOutput: take the entries from the dense features
            rows, cols = out.feats.reshape(batch, -1).nonzero(as_tuple=True)
            active = Active(rows, cols, out.feats.reshape(batch, -1)[rows, cols])
        level = self.level[active.cols]
        recons = []
        for j in range(len(self.group_sizes) - 1):
            inner = Active(active.rows, active.cols, active.values * (level <= j))
            decoded = sparse_decode(self.W_dec, inner, batch, out.decoder_table)
            recons.append(self.collectives.sum(decoded) + self.b_dec)
        return recons

    def loss(self, x: Tensor, out: ForwardOutput, ctx: LossContext) -> LossOutput:
        """The mean of every prefix's MSE, plus AuxK; ``mse`` reports the whole dictionary's."""
        mse = mse_loss(x, out.recon)
        inner = [mse_loss(x, r) for r in self.level_reconstructions(out, x.shape[0])]
        mean = torch.stack([*inner, mse]).mean()
        lo = self.combine(x, mean, self.auxk(x, out, ctx))
        return LossOutput(lo.loss, mse, lo.sparsity, lo.aux)
