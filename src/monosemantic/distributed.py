"""Data-parallel training on torch.distributed: started by torchrun, gloo on CPU, NCCL on GPU.

Every rank holds a full copy of each dictionary and takes its own disjoint slice of every global
batch; gradients are averaged before the optimizer step, so N ranks with a global batch B follow
the same trajectory as one process with batch B. Rank 0 alone writes files.

The trainer sees each dictionary through a ``Layout``: ``Whole`` here (one process, or a copy per
data-parallel rank) or ``feature_parallel.FeatureShard`` (one rank's slice of the features, which
builds on these collectives). Everything the training step does across ranks goes through it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from monosemantic.errors import UserError
from monosemantic.sae import SparseAutoencoder


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch (B, d) -> (B / world, d)."""
        if len(batch) % self.world:
            raise UserError(f"--train-batch-size {len(batch)} must be divisible by the {self.world} ranks")
        per = len(batch) // self.world
        return batch[self.rank * per : (self.rank + 1) * per]

    def average_gradients(self, module: nn.Module) -> None:
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])  # one collective instead of one per tensor
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def average_buffers(self, module: nn.Module) -> None:
        """Keep state that a step updates from local statistics (e.g. thresholds) identical."""
        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= self.world

    def any(self, mask: Tensor) -> Tensor:
        """Element-wise OR of a bool tensor across ranks."""
        m = mask.to(torch.int32)
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        return m.bool()

    def mean(self, values: Tensor) -> Tensor:
        return self.sum(values) / self.world

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum across ranks (a new tensor; no gradient)."""
        v = values.detach().clone()
        dist.all_reduce(v)
        return v

    def min(self, values: Tensor) -> Tensor:
        """Element-wise minimum across ranks (a new tensor; no gradient)."""
        v = values.detach().clone()
        dist.all_reduce(v, op=dist.ReduceOp.MIN)
        return v

    def all_gather(self, mine: Tensor) -> Tensor:
        """Every rank's tensor of one shape, stacked in rank order: (...) -> (world, ...)."""
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(parts, mine.contiguous())
        return torch.stack(parts)

    def gather_to_main(self, mine: Tensor, dim: int) -> Tensor | None:
        """Rank 0 gets every rank's tensor (of one shape) concatenated along ``dim`` in rank order;
        the other ranks get None."""
        mine = mine.detach().contiguous()
        parts = [torch.empty_like(mine) for _ in range(self.world)] if self.is_main else None
        dist.gather(mine, parts, dst=0)
        return torch.cat(parts, dim) if parts is not None else None

    def gather_rows(self, mine: Tensor, n_total: int) -> Tensor:
        """Undo a round-robin split: rank r holds items r, r+world, ... of ``n_total`` (dim 0);
        every rank gets all of them back in the original order."""
        per = -(-n_total // self.world)
        padded = torch.zeros(per, *mine.shape[1:], dtype=mine.dtype, device=mine.device)
        padded[: len(mine)] = mine
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.stack(parts, dim=1).reshape(per * self.world, *mine.shape[1:])[:n_total]

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        """Leave the process group together (a rank leaving early aborts its peers' gloo threads)."""
        dist.barrier()
        dist.destroy_process_group()


class Layout(Protocol):
    """One dictionary as this process trains it: the module, and what the training step and the
    checkpoints do across ranks. ``Whole`` and ``feature_parallel.FeatureShard`` implement it."""

    sae: SparseAutoencoder
    """This process's module: the whole dictionary, or its slice of the features."""
    n_features: int
    """The whole dictionary's number of features."""
    n_local: int
    """The features this process holds (the length of its firing records)."""

    @property
    def checkpoint_device(self) -> torch.device:
        """Where a checkpoint is loaded before ``load`` takes what this process holds."""
        ...

    def local_batch(self, batch: Tensor) -> Tensor:
        """What this process trains on of a global batch (B, d)."""
        ...

    def sync_gradients(self) -> None:
        """Make the gradients after backward those of the global batch and loss."""
        ...

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        """Scale the gradients so that the whole dictionary's norm is at most ``max_norm``."""
        ...

    def sync_step(self, fired: Tensor, values: Tensor, batch: int) -> tuple[Tensor, Tensor, int]:
        """After the optimizer step: (which of this process's features fired (n_local,) bool,
        the batch statistics, the tokens of the global batch) from this process's (fired, values,
        rows of its batch); keeps updated buffers identical on every rank."""
        ...

    def sum_over_features(self, values: Tensor) -> Tensor:
        """Counts over this process's features -> over the whole dictionary's."""
        ...

    def gather(self, opt: torch.optim.Optimizer, since_fired: Tensor) -> tuple[Any, Any, Tensor] | None:
        """(state_dict, optimizer state_dict, tokens since each feature fired (n,)) of the whole
        dictionary, or None on a rank that does not get it; every rank must call it."""
        ...

    def load(
        self,
        sae: dict[str, Tensor],
        opt_state: dict[str, Any],
        since_fired: Tensor,
        opt: torch.optim.Optimizer,
    ) -> Tensor:
        """Take what this process holds of a whole dictionary's checkpoint into ``sae`` and ``opt``;
        returns its firing records."""
        ...

    def whole(self) -> SparseAutoencoder | None:
        """The whole dictionary (None on a rank that does not get it; every rank must call it)."""
        ...


class Whole:
    """A whole dictionary: alone, or (with ``dist``) one data-parallel rank's copy of it, trained
    on this rank's slice of each global batch."""

    def __init__(self, sae: SparseAutoencoder, dist: DistContext | None = None) -> None:
        self.sae, self.dist = sae, dist
        self.n_features = self.n_local = sae.n_features

    @property
    def checkpoint_device(self) -> torch.device:
        return self.sae.W_dec.device

    def local_batch(self, batch: Tensor) -> Tensor:
        return batch if self.dist is None else self.dist.shard(batch)

    def sync_gradients(self) -> None:
        if self.dist is not None:
            self.dist.average_gradients(self.sae)

    def clip_grad_norm_(self, max_norm: float) -> Tensor:
        return torch.nn.utils.clip_grad_norm_(self.sae.parameters(), max_norm)

    def sync_step(self, fired: Tensor, values: Tensor, batch: int) -> tuple[Tensor, Tensor, int]:
        if self.dist is None:
            return fired, values, batch
        self.dist.average_buffers(self.sae)
        return self.dist.any(fired), self.dist.mean(values), batch * self.dist.world

    def sum_over_features(self, values: Tensor) -> Tensor:
        return values

    def gather(self, opt: torch.optim.Optimizer, since_fired: Tensor) -> tuple[Any, Any, Tensor] | None:
        return self.sae.state_dict(), opt.state_dict(), since_fired

    def load(
        self,
        sae: dict[str, Tensor],
        opt_state: dict[str, Any],
        since_fired: Tensor,
        opt: torch.optim.Optimizer,
    ) -> Tensor:
        self.sae.load_state_dict(sae)
        opt.load_state_dict(opt_state)
        return since_fired

    def whole(self) -> SparseAutoencoder:
        return self.sae


def init_from_env(device: str) -> DistContext | None:
    """Join the process group torchrun describes in the environment; None when not under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(dist.get_rank(), dist.get_world_size())


def local_device(device: str) -> str:
    """Under torchrun on GPUs, each rank uses the GPU of its LOCAL_RANK."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{os.environ['LOCAL_RANK']}"
    return device
