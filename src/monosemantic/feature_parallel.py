"""Feature-parallel training, for dictionaries too big for one device (``train --feature-parallel``
under torchrun).

With N ranks, rank r owns the contiguous slice of features [r·n/N, (r+1)·n/N):

    sharded     W_enc rows, b_enc entries, W_dec columns, JumpReLU's log_threshold entries, their
                Adam moments, and the dead-feature counters
    replicated  b_dec, BatchTopK's threshold, the Adam step count; updated identically everywhere

Every rank sees the same whole batch x (B, d): there is no data parallelism in this mode (the two
do not compose yet). Each rank computes its own pre-activations and features (B, n/N), and

    x̂ = Σ_r W_dec,r f_r + b_dec

through one all-reduce of the (B, d) partial reconstructions. Feature-additive sparsity terms (relu's
decoder-norm-weighted L1, jumprelu's L0) are summed the same way, so every rank ends up with the
same, global loss. TopK and BatchTopK need a global top-k: each rank all-gathers its local top-k
values per row, (B, k·N) in all (for BatchTopK one row of k·B values per rank), and keeps its entries
at or above the global k-th value; AuxK does the same over the dead latents of all ranks (a second
gather and all-reduce, on steps where some latent is dead). Gradient clipping uses the global norm,
and the logged statistics are reduced over ranks: a few scalar all-reduces per step.

The architectures' own modules do the math: each rank holds a ``SparseAutoencoder`` of its n/N
features and ``FeatureShard`` only changes what crosses features (the reconstruction, the sparsity
sum, the top-k selection, BatchTopK's smallest kept activation). Checkpoints and the saved
dictionary hold the whole dictionary, in the format of unsharded training (rank 0 gathers the
parameters and Adam moments), so either kind of run resumes the other's checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from monosemantic.distributed import DistContext
from monosemantic.errors import UserError
from monosemantic.sae import (
    BatchTopKSAE,
    ForwardOutput,
    JumpReLUSAE,
    LossContext,
    LossOutput,
    ReluSAE,
    SparseAutoencoder,
    TopKSAE,
)
from monosemantic.sae.base import mse_loss
from monosemantic.sae.topk import Active, auxk_loss, sparse_decode

# The dimension along which each per-feature tensor is split; the others are replicated.
FEATURE_DIM = {"W_enc": 0, "b_enc": 0, "W_dec": 1, "log_threshold": 0}
REPLICATED = {"b_dec", "threshold"}
SUPPORTED = (ReluSAE, JumpReLUSAE, TopKSAE)  # BatchTopKSAE is a TopKSAE


class SumOverRanks(torch.autograd.Function):
    """Σ_r t_r forward (an all-reduce); the gradient passes through unchanged.

    Every rank computes the same loss L from the sum S = Σ_r t_r, so ∂L/∂t_r = ∂L/∂S is already
    on rank r, the only rank that holds t_r's graph. Reducing the gradient as well (the adjoint of
    an all-reduce in general) would count it N times."""

    @staticmethod
    def forward(ctx: Any, t: Tensor) -> Tensor:
        out = t.clone()
        tdist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def sum_over_ranks(t: Tensor) -> Tensor:
    out: Tensor = SumOverRanks.apply(t)
    return out


def global_topk_mask(scores: Tensor, k: int, dist: DistContext) -> Tensor:
    """Which of this rank's columns of ``scores`` (R, m) are among the k largest of their row over
    all ranks' columns (R, m·N). Ties at the k-th value go to the lowest global column (lower rank
    first, then lower local column), so exactly min(k, m·N) entries per row are kept."""
    rows, m = scores.shape
    k = min(k, m * dist.world)
    # Only a rank's k largest can be among the global k largest.
    gathered = dist.all_gather(scores.topk(min(k, m), dim=1).values)  # (N, R, min(k, m))
    candidates = gathered.transpose(0, 1).reshape(rows, -1)  # (R, N·min(k, m))
    kth = candidates.topk(k, dim=1).values[:, -1:]  # (R, 1)
    # Exact counts: an entry above the k-th value that a rank did not send would mean that rank
    # sent k entries above it, more than the k − 1 there are.
    free = k - (candidates > kth).sum(1)  # (R,) slots left for entries equal to the k-th value
    ties_before = (gathered[: dist.rank] == kth).sum(dim=(0, 2))  # (R,)
    tie = scores == kth
    quota = (free - ties_before).clamp_min(0)
    return (scores > kth) | (tie & (tie.cumsum(1) <= quota[:, None]))


def _active(mask: Tensor, scores: Tensor) -> Active:
    """The ReLU of the masked entries of scores (B, n), in the row-major order sparse_decode reads."""
    rows, cols = mask.nonzero(as_tuple=True)
    return Active(rows, cols, torch.relu(scores[rows, cols]))


class FeatureShard(nn.Module):
    """This rank's slice of a dictionary, trained as the whole: ``forward`` and ``loss`` return the
    global reconstruction and loss (identical on every rank); ``pre_acts`` and ``feats`` stay local
    (B, n/N). Parameters are those of ``local``, in its order, so Adam's state maps one to one."""

    local: SparseAutoencoder

    def __init__(self, local: SparseAutoencoder, n_features: int, dist: DistContext) -> None:
        super().__init__()
        if not isinstance(local, SUPPORTED):
            raise NotImplementedError(f"feature-parallel training of {type(local).__name__}")
        self.local, self.dist = local, dist
        self.n_features, self.d_model, self.arch = n_features, local.d_model, local.arch
        self.start = dist.rank * local.n_features

    @classmethod
    def from_full(cls, sae: SparseAutoencoder, dist: DistContext) -> FeatureShard:
        """This rank's slice of a (CPU) dictionary."""
        n = sae.n_features
        if n % dist.world:
            raise UserError(
                f"--feature-parallel splits the features evenly over the {dist.world} ranks: "
                f"use dictionary sizes divisible by {dist.world} ({n} is not)"
            )
        local = type(sae)(sae.d_model, n // dist.world, **sae.hyperparameters())
        shard = cls(local, n, dist)
        local.load_state_dict(shard.slice_state(sae.state_dict()))
        return shard

    # -- sharding of tensors ----------------------------------------------------------------------

    def _feature_dim(self, name: str) -> int | None:
        if name in FEATURE_DIM:
            return FEATURE_DIM[name]
        if name in REPLICATED:
            return None
        raise NotImplementedError(f"feature-parallel: is {self.arch}'s {name!r} per feature or shared?")

    def _slice(self, name: str, full: Tensor) -> Tensor:
        dim = self._feature_dim(name)
        return full if dim is None else full.narrow(dim, self.start, self.n_local).clone()

    def _gather(self, name: str, mine: Tensor) -> Tensor | None:
        """The whole tensor on rank 0 (None elsewhere); a replicated one is rank 0's copy."""
        dim = self._feature_dim(name)
        if dim is None:
            return mine.detach().clone() if self.dist.is_main else None
        return self.dist.gather_to_main(mine, dim)

    @property
    def n_local(self) -> int:
        return self.local.n_features

    def feature_slice(self, full: Tensor) -> Tensor:
        """This rank's entries of a per-feature vector (n,) -> (n/N,)."""
        return full.narrow(0, self.start, self.n_local).clone()

    def gather_features(self, mine: Tensor) -> Tensor | None:
        """A per-feature vector (n/N,) -> the whole (n,) on rank 0, None elsewhere."""
        return self.dist.gather_to_main(mine, 0)

    def slice_state(self, full: dict[str, Tensor]) -> dict[str, Tensor]:
        """A whole dictionary's state_dict -> this rank's."""
        return {k: self._slice(k, v) for k, v in full.items()}

    def gather_state(self) -> dict[str, Tensor] | None:
        """The whole dictionary's state_dict on rank 0 (None elsewhere); every rank must call it."""
        full = {k: self._gather(k, v) for k, v in self.local.state_dict().items()}
        return {k: v for k, v in full.items() if v is not None} if self.dist.is_main else None

    def _param_names(self) -> list[str]:
        return [name for name, _ in self.local.named_parameters()]

    def slice_optimizer_state(self, full: dict[str, Any]) -> dict[str, Any]:
        """An optimizer state_dict of the whole dictionary -> this rank's (moments shaped like
        their parameter are sliced with it, scalars such as Adam's step are shared)."""
        names = self._param_names()
        state = {
            i: {k: self._slice(names[i], v) if v.dim() else v for k, v in s.items()}
            for i, s in full["state"].items()
        }
        return {**full, "state": state}

    def gather_optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The optimizer state_dict of the whole dictionary on rank 0 (None elsewhere)."""
        local, names = opt.state_dict(), self._param_names()
        state = {
            i: {k: self._gather(names[i], v) if v.dim() else v for k, v in s.items()}
            for i, s in local["state"].items()
        }
        return {**local, "state": state} if self.dist.is_main else None

    # -- training ---------------------------------------------------------------------------------

    def center_on(self, mean: Tensor) -> None:
        """As ``SparseAutoencoder.center_on``: W_enc and b_enc are this rank's rows, b_dec is shared."""
        self.local.center_on(mean)

    def forward(self, x: Tensor) -> ForwardOutput:
        """x (B, d) -> local pre_acts and feats (B, n/N), the global reconstruction (B, d)."""
        local = self.local
        if not isinstance(local, TopKSAE):  # feature-wise activations: the module's own encode
            pre, feats = local.encode(x)
            return ForwardOutput(pre, feats, sum_over_ranks(feats @ local.W_dec.T) + local.b_dec)
        pre = x @ local.W_enc.T + local.b_enc
        active = self._select(pre)
        partial = sparse_decode(local.W_dec, active, x.shape[0])
        return ForwardOutput(pre, active.dense(*pre.shape), sum_over_ranks(partial) + local.b_dec)

    def _select(self, pre: Tensor) -> Active:
        """TopK: the k largest of each row over all ranks; BatchTopK (training): the k·B largest of
        the batch over all ranks, and at inference its threshold, which needs no other rank."""
        local = self.local
        assert isinstance(local, TopKSAE)
        if isinstance(local, BatchTopKSAE):
            if not local.training:
                return local.select(pre)
            flat = pre.reshape(1, -1)
            mask = global_topk_mask(flat, local.k * pre.shape[0], self.dist).view_as(pre)
            return _active(mask, pre)
        return _active(global_topk_mask(pre, local.k, self.dist), pre)

    def loss(self, x: Tensor, out: ForwardOutput, ctx: LossContext) -> LossOutput:
        """The global loss: the module's own loss on the global reconstruction, with its sparsity
        term summed over ranks (relu, jumprelu) or AuxK over the dead latents of all ranks."""
        local = self.local
        if isinstance(local, TopKSAE):
            return local.combine(x, mse_loss(x, out.recon), self._auxk(x, out, ctx.dead))
        # mse of the global reconstruction; the sparsity of this rank's features, additive over them,
        # and so is what else the local loss adds (jumprelu's weighted pre-activation loss)
        lo = local.loss(x, out, ctx)
        sparsity = sum_over_ranks(lo.sparsity)
        rest = sum_over_ranks(lo.loss - lo.mse - ctx.sparsity_coeff * lo.sparsity)
        aux = sum_over_ranks(lo.aux)
        return LossOutput(lo.mse + ctx.sparsity_coeff * sparsity + rest, lo.mse, sparsity, aux)

    def _auxk(self, x: Tensor, out: ForwardOutput, dead: Tensor | None) -> Tensor:
        """``sae.topk.auxk_loss`` with the top-k_aux taken over the dead latents of all ranks and
        their decoded sum reduced over ranks."""
        local = self.local
        assert isinstance(local, TopKSAE)
        n_dead = 0 if dead is None else int(self.dist.sum(dead.sum()))
        batch = x.shape[0]
        return auxk_loss(
            x,
            out.recon,
            out.pre_acts,
            dead,
            n_dead,
            local.k_aux,
            lambda pre, k: _active(global_topk_mask(pre, k, self.dist), pre),
            lambda active: sum_over_ranks(sparse_decode(local.W_dec, active, batch)),
        )

    def before_optimizer_step(self) -> None:
        self.local.before_optimizer_step()  # TopK's projection acts column by column: local

    @torch.no_grad()
    def after_optimizer_step(self, out: ForwardOutput) -> None:
        local = self.local
        if isinstance(local, BatchTopKSAE) and local.training:
            # The threshold follows the smallest activation kept in the whole batch: the rule reads
            # it from feats, so hand it the minimum over ranks.
            feats = out.feats
            smallest = self.dist.min(feats.masked_fill(feats <= 0, float("inf")).amin())
            out = out._replace(feats=smallest.view(1, 1))
        local.after_optimizer_step(out)

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` with the norm of the whole dictionary's gradient:
        the squares of the sharded gradients summed over ranks, the replicated ones counted once."""
        sharded: list[Tensor] = []
        replicated: list[Tensor] = []
        for name, p in self.local.named_parameters():
            if p.grad is not None:
                (replicated if self._feature_dim(name) is None else sharded).append(p.grad)
        squares = torch.stack([g.pow(2).sum() for g in sharded]).sum()
        total = self.dist.sum(squares)
        if replicated:
            total = total + torch.stack([g.pow(2).sum() for g in replicated]).sum()
        norm = total.sqrt()
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in sharded + replicated:
            g.mul_(coef)
        return norm

    def sum_over_features(self, values: Tensor) -> Tensor:
        """Statistics additive over features (active counts, dead counts), summed over ranks."""
        return self.dist.sum(values)
