"""What every format module shares: the dictionary read from another library's files, and the
checks and conversions all of them need.

Each format module (``saelens``, ``sparsify``, ``dictionary_learning``) has ``detect(path) ->
bool``, ``read(path) -> Foreign`` and ``write(sae, meta, out) -> list[Path]``; ``neuronpedia``
only writes. Every reader folds the source's input conventions (``x − b_dec`` before the encoder,
a constant input scale) into our form ``f = act(W_enc x + b_enc)``, ``x̂ = W_dec f + b_dec`` on raw
activations, so that the imported dictionary computes exactly what the source computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from monosemantic.errors import UserError
from monosemantic.sae import SparseAutoencoder


@dataclass
class Foreign:
    """A dictionary read from another library's files, converted to one of our architectures."""

    sae: SparseAutoencoder
    """acts on raw activations, in float32"""
    hook: str
    """the source's hook name (``blocks.6.hook_resid_post``, ``layers.6``, ...)"""
    model: str
    """the model the source names ('' when it names none)"""
    format: str
    """saelens, sparsify or dictionary_learning"""
    notes: dict[str, Any] = field(default_factory=dict)
    """source settings kept in cfg.json under ``imported_from`` (architecture, dtype, ...)"""


@dataclass
class ExportMeta:
    """What a writer needs to know about a dictionary beside its weights (from its cfg.json)."""

    name: str
    model: str
    layer: int
    seq_len: int = 128
    extra: dict[str, Any] = field(default_factory=dict)


def load_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors in float32.

    Raises:
        UserError: the file is missing or corrupt.
    """
    if not path.is_file():
        raise UserError(f"{path} is missing: give the folder that holds the dictionary's weights")
    try:
        return {k: v.float() for k, v in load_file(str(path)).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is corrupt ({str(e).splitlines()[0]}): download or export it again") from e


def need(tensors: dict[str, Tensor], names: tuple[str, ...], where: Path) -> list[Tensor]:
    """The named tensors, or a one-line error naming the first one missing.

    Raises:
        UserError: a tensor is missing.
    """
    for name in names:
        if name not in tensors:
            have = ", ".join(sorted(tensors)) or "none"
            raise UserError(f"{where} has no tensor {name!r} (it has {have}): is it the right format?")
    return [tensors[n] for n in names]


def check_shape(t: Tensor, shape: tuple[int, ...], what: str, where: Path) -> None:
    """Raises UserError when ``t`` is not of ``shape``."""
    if tuple(t.shape) != shape:
        raise UserError(f"{where}: {what} has shape {tuple(t.shape)}, expected {shape} from its config")


@torch.no_grad()
def fill(
    sae: SparseAutoencoder, W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, *, centre: bool
) -> SparseAutoencoder:
    """Load weights in our layout: W_enc (n, d), b_enc (n,), W_dec (d, n), b_dec (d,). ``centre``:
    the source encodes ``x − b_dec``; folded into b_enc as ``b_enc − W_enc b_dec``."""
    sae.W_enc.copy_(W_enc)
    sae.W_dec.copy_(W_dec)
    sae.b_dec.copy_(b_dec)
    sae.b_enc.copy_(b_enc - W_enc @ b_dec if centre else b_enc)
    return sae.eval().requires_grad_(False)


def thresholds_to_log(theta: Tensor) -> Tensor:
    """Per-feature JumpReLU thresholds -> our ``log_threshold``. A threshold ≤ 0 gates nothing
    beyond the ReLU, which θ = 0 (log −∞) reproduces exactly."""
    return theta.clamp(min=0).log()
