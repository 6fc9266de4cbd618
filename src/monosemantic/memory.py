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


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 1 << 30
"""Free memory glibc keeps at the top of the heap for reuse instead of returning it to the kernel."""


def keep_freed_memory() -> bool:
    """Make glibc's malloc serve every allocation from its heap and keep up to ``KEEP_FREED_BYTES`` of
    freed memory for reuse; False where the C library is not glibc (nothing changes).

    Why: glibc maps each block above 32 MB (its largest mmap threshold) freshly from the kernel and
    unmaps it when freed, so every such temporary of a training step (a 16,384 x 576 float32 gradient
    is 37.7 MB) pays a page fault per 4 KiB page when first written: zeroing one took 15 ms against
    1.3 ms for a reused block on the 2-core CPU, and a 16,384-feature TopK step took 570-600 ms of
    CPU against 345-410 ms (docs/bench.md). The setting is process-wide; memory held stays at the peak of the
    step's temporaries, which a training process reaches every step anyway."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
