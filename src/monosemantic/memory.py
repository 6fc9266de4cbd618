"""Whether the dictionaries asked for fit the memory of the device they train on, checked before
anything is loaded or written, so that an impossible size is refused with its estimate instead of
being killed by the kernel (or CUDA) hours later."""

from __future__ import annotations

from pathlib import Path

from monosemantic.errors import UserError

FLOAT = 4
"""Bytes per parameter and activation: training runs in float32."""


def train_bytes(d_model: int, n_features: int, batch_size: int, shards: int = 1) -> int:
    """Peak bytes to train one dictionary (its features split over ``shards`` ranks): weights,
    gradients and Adam's two moments (4 copies of the parameters), one serialised checkpoint
    (3 copies: weights and moments), and ~4 (batch, n) float tensors (pre-activations, features,
    their gradients)."""
    params = (2 * d_model * n_features + n_features + d_model) // shards
    return FLOAT * (7 * params + 4 * batch_size * n_features // shards)


def available_bytes(device: str) -> int | None:
    """Free memory of ``device``: CUDA's free memory, else the kernel's MemAvailable (None when
    unknown)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_train_memory(
    d_model: int, sizes: list[int], batch_size: int, device: str, shards: int = 1, free: int | None = None
) -> int:
    """The estimated peak bytes of training ``sizes`` together (``train_bytes``); returns it.

    Raises:
        UserError: the estimate exceeds 90% of the device's free memory (``free``, measured when
            None), with both figures and what to change.
    """
    need = sum(train_bytes(d_model, n, batch_size, shards) for n in sizes)
    free = available_bytes(device) if free is None else free
    if free is not None and need > 0.9 * free:
        raise UserError(
            f"training dictionaries of {','.join(map(str, sizes))} features (d_model {d_model}, batch "
            f"{batch_size}) needs ~{need / 1e9:.1f} GB and {device} has {free / 1e9:.1f} GB free: "
            "train fewer or smaller sizes at a time, lower --train-batch-size, or shard the features "
            "over more ranks (--feature-parallel under torchrun)"
        )
    return need
