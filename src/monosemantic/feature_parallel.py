"""Feature-parallel training, for dictionaries too big for one device (``train --feature-parallel``
under torchrun).

With N ranks, rank r owns the contiguous slice of features [r·n/N, (r+1)·n/N):

    sharded     W_enc rows, b_enc entries, W_dec columns, JumpReLU's log_threshold entries, their
                Adam moments, and the dead-feature counters
    replicated  b_dec, BatchTopK's threshold, the Adam step count; updated identically everywhere

Every rank sees the same whole batch x (B, d): there is no data parallelism in this mode (the two
do not compose yet). Each rank computes its own pre-activations and features (B, n/N), and

    x̂ = Σ_r W_dec,r f_r + b_dec

through one all-reduce of the (B, d) partial reconstructions. Feature-additive loss terms (relu's
decoder-norm-weighted L1, jumprelu's L0 and pre-activation loss) are summed the same way, so every
rank ends up with the same, global loss. TopK and BatchTopK need a global top-k: each rank
all-gathers its local top-k values per row, (B, k·N) in all (for BatchTopK one row of k·B values per
rank), and keeps its entries at or above the global k-th value; AuxK does the same over the dead
latents of all ranks (a second gather and all-reduce, on steps where some latent is dead). Gradient
clipping uses the global norm, and the logged statistics are reduced over ranks: a few scalar
all-reduces per step.

The architectures' own modules do the math: each rank holds a ``SparseAutoencoder`` of its n/N
features whose ``collectives`` are ``RankCollectives``, so that what crosses features (the
reconstruction, the sparsity sum, the top-k selection, BatchTopK's smallest kept activation) runs
over the ranks inside the architecture's own ``forward``, ``loss`` and ``after_optimizer_step``.
``FeatureShard`` is the trainer's view of that slice (the ``distributed.Layout`` that ``Whole``
gives an unsharded dictionary): the global gradient norm, the statistics over all features, and
checkpoints that hold the whole dictionary in the format of unsharded training (rank 0 gathers the
parameters and Adam moments), so either kind of run resumes the other's checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist
from torch import Tensor

from monosemantic.distributed import DistContext
from monosemantic.errors import UserError
from monosemantic.sae import SparseAutoencoder
from monosemantic.sae.collectives import Collectives
from monosemantic.sae.sparse import Active


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


class RankCollectives(Collectives):
    """What crosses features when each rank holds one slice of them."""

    def __init__(self, dist: DistContext) -> None:
        self.dist = dist

    def sum(self, t: Tensor) -> Tensor:
        return sum_over_ranks(t)

    def count(self, t: Tensor) -> Tensor:
        return self.dist.sum(t)

    def min(self, t: Tensor) -> Tensor:
        return self.dist.min(t)

    def top_k(self, scores: Tensor, k: int) -> Active:
        mask = global_topk_mask(scores, k, self.dist)
        rows, cols = mask.nonzero(as_tuple=True)  # row-major, the order sparse_decode reads
        return Active(rows, cols, torch.relu(scores[rows, cols]))


class FeatureShard:
    """This rank's slice of a dictionary, as the trainer sees it (a ``distributed.Layout``): ``sae``
    holds the n/N features and computes the global reconstruction and loss (identical on every
    rank), its ``pre_acts`` and ``feats`` local (B, n/N)."""

    def __init__(self, local: SparseAutoencoder, n_features: int, dist: DistContext) -> None:
        local.collectives = RankCollectives(dist)
        self.sae, self.dist = local, dist
        self.n_features, self.n_local = n_features, local.n_features
        self.start = dist.rank * local.n_features

    @property
    def checkpoint_device(self) -> torch.device:
        return torch.device("cpu")  # slice on the CPU rather than hold the whole on the device

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
        dims = self.sae.feature_dims
        if name not in dims:
            raise NotImplementedError(
                f"feature-parallel: is {self.sae.arch}'s {name!r} per feature or shared?"
            )
        return dims[name]

    def _slice(self, name: str, full: Tensor) -> Tensor:
        dim = self._feature_dim(name)
        return full if dim is None else full.narrow(dim, self.start, self.n_local).clone()

    def _gather(self, name: str, mine: Tensor) -> Tensor | None:
        """The whole tensor on rank 0 (None elsewhere); a replicated one is rank 0's copy."""
        dim = self._feature_dim(name)
        if dim is None:
            return mine.detach().clone() if self.dist.is_main else None
        return self.dist.gather_to_main(mine, dim)

    def slice_state(self, full: dict[str, Tensor]) -> dict[str, Tensor]:
        """A whole dictionary's state_dict -> this rank's."""
        return {k: self._slice(k, v) for k, v in full.items()}

    def _param_names(self) -> list[str]:
        return [name for name, _ in self.sae.named_parameters()]

    def slice_optimizer_state(self, full: dict[str, Any]) -> dict[str, Any]:
        """An optimizer state_dict of the whole dictionary -> this rank's (moments shaped like
        their parameter are sliced with it, scalars such as Adam's step are shared)."""
        names = self._param_names()
        state = {
            i: {k: self._slice(names[i], v) if v.dim() else v for k, v in s.items()}
            for i, s in full["state"].items()
        }
        return {**full, "state": state}

    def gather_state(self) -> dict[str, Tensor] | None:
        """The whole dictionary's state_dict on rank 0 (None elsewhere); every rank must call it."""
        full = {k: self._gather(k, v) for k, v in self.sae.state_dict().items()}
        return {k: v for k, v in full.items() if v is not None} if self.dist.is_main else None

    def gather_optimizer_state(self, opt: torch.optim.Optimizer) -> dict[str, Any] | None:
        """The optimizer state_dict of the whole dictionary on rank 0 (None elsewhere)."""
        local, names = opt.state_dict(), self._param_names()
        state = {
            i: {k: self._gather(names[i], v) if v.dim() else v for k, v in s.items()}
            for i, s in local["state"].items()
        }
        return {**local, "state": state} if self.dist.is_main else None

    # -- the Layout the trainer calls -------------------------------------------------------------

    def local_batch(self, batch: Tensor) -> Tensor:
        """Every rank trains on the whole batch."""
        return batch

    def sync_gradients(self) -> None:
        """Nothing to do: the loss is global, and each rank holds the gradients of its slice."""

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """``torch.nn.utils.clip_grad_norm_`` with the norm of the whole dictionary's gradient:
        the squares of the sharded gradients summed over ranks, the replicated ones counted once."""
        sharded: list[Tensor] = []
        replicated: list[Tensor] = []
        for name, p in self.sae.named_parameters():
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

    def sync_step(self, fired: Tensor, values: Tensor, batch: int) -> tuple[Tensor, Tensor, int]:
        """The loss terms are global already and the firing records stay per slice."""
        return fired, values, batch

    def sum_over_features(self, values: Tensor) -> Tensor:
        """Statistics additive over features (active counts, dead counts), summed over ranks."""
        return self.dist.sum(values)

    def gather(self, opt: torch.optim.Optimizer, since_fired: Tensor) -> tuple[Any, Any, Tensor] | None:
        """The whole dictionary's (state_dict, optimizer state_dict, tokens since each feature
        fired) on rank 0, None elsewhere; every rank must call it."""
        sae, opt_state = self.gather_state(), self.gather_optimizer_state(opt)
        since = self.dist.gather_to_main(since_fired, 0)
        return None if sae is None or since is None else (sae, opt_state, since)

    def load(
        self,
        sae: dict[str, Tensor],
        opt_state: dict[str, Any],
        since_fired: Tensor,
        opt: torch.optim.Optimizer,
    ) -> Tensor:
        """Take this rank's slice of a whole dictionary's checkpoint; returns its firing records."""
        self.sae.load_state_dict(self.slice_state(sae))
        opt.load_state_dict(self.slice_optimizer_state(opt_state))
        device = self.sae.W_dec.device
        return since_fired.narrow(0, self.start, self.n_local).clone().to(device)

    def whole(self) -> SparseAutoencoder | None:
        """The whole dictionary, gathered onto rank 0's CPU (None elsewhere; every rank must call it)."""
        state = self.gather_state()
        if state is None:
            return None
        sae = type(self.sae)(self.sae.d_model, self.n_features, **self.sae.hyperparameters())
        sae.load_state_dict(state)
        return sae
