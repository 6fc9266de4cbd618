"""Saved dictionaries on disk: ``sae.safetensors`` + ``cfg.json``, the input scale folded in so that
the dictionary works on raw activations."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path, read_json, write_json
from monosemantic.sae import ARCHITECTURES, SparseAutoencoder


def sae_name(arch: str, n_features: int) -> str:
    return f"{arch}-{n_features}"


def save_dictionary(sae: SparseAutoencoder, out_dir: Path, cfg: dict[str, Any], scale: float) -> None:
    """Write the dictionary trained on ``scale·x`` so that it acts on raw ``x``."""
    raw = copy.deepcopy(sae).cpu()
    raw.fold_input_scale(scale)
    with atomic_path(out_dir / "sae.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in raw.state_dict().items()}, str(tmp))
    write_json(
        out_dir / "cfg.json",
        {
            **cfg,
            "arch": sae.arch,
            "hyperparameters": sae.hyperparameters(),
            "d_model": sae.d_model,
            "n_features": sae.n_features,
            "input_scale": scale,
            "input_scale_folded": True,
        },
    )


def load_dictionary(sae_dir: Path, device: str = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load a saved dictionary (acting on raw activations) and its cfg.json."""
    if not (sae_dir / "cfg.json").is_file() or not (sae_dir / "sae.safetensors").is_file():
        raise UserError(f"{sae_dir} holds no finished dictionary: run `monosemantic train` (it resumes)")
    cfg = read_json(sae_dir / "cfg.json")
    arch = ARCHITECTURES.get(cfg.get("arch", ""))
    if arch is None:
        raise UserError(f"{sae_dir}/cfg.json names an unknown architecture {cfg.get('arch')!r}")
    sae = arch(int(cfg["d_model"]), int(cfg["n_features"]), **cfg.get("hyperparameters", {}))
    try:
        state = load_file(str(sae_dir / "sae.safetensors"))
        sae.load_state_dict(state)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{sae_dir}/sae.safetensors is corrupt ({e}): delete the folder and retrain") from e
    except RuntimeError as e:
        raise UserError(
            f"{sae_dir}/sae.safetensors does not match its cfg.json: delete the folder and retrain"
        ) from e
    return sae.to(device).eval().requires_grad_(False), cfg
