"""Saved dictionaries on disk: ``sae.safetensors`` + ``cfg.json``, the input scale folded in so that
the dictionary works on raw activations."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path, read_json, read_jsonl, write_json
from monosemantic.integrity import sha256_file
from monosemantic.sae import ARCHITECTURES, SparseAutoencoder


def sae_name(arch: str, n_features: int) -> str:
    return f"{arch}-{n_features}"


def save_dictionary(sae: SparseAutoencoder, out_dir: Path, cfg: dict[str, Any], scale: float) -> None:
    """Write the dictionary trained on ``scale·x`` so that it acts on raw ``x``."""
    raw = copy.deepcopy(sae).cpu()
    raw.fold_input_scale(scale)
    # cfg.json goes first and comes back last, with the weights' checksum: a process killed in
    # between leaves no cfg.json, which reads as "not finished" and makes train write both again
    (out_dir / "cfg.json").unlink(missing_ok=True)
    with atomic_path(out_dir / "sae.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in raw.state_dict().items()}, str(tmp))
        digest = sha256_file(tmp)
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
            "sae_sha256": digest,
        },
    )


def dictionary_saved(sae_dir: Path) -> bool:
    """Whether ``sae_dir`` holds both files of a saved dictionary (see ``save_dictionary``)."""
    return (sae_dir / "cfg.json").is_file() and (sae_dir / "sae.safetensors").is_file()


def load_dictionary(sae_dir: Path, device: str = "cpu") -> tuple[SparseAutoencoder, dict[str, Any]]:
    """Load a saved dictionary (acting on raw activations) and its cfg.json."""
    if not (sae_dir / "cfg.json").is_file() or not (sae_dir / "sae.safetensors").is_file():
        raise UserError(f"{sae_dir} holds no finished dictionary: run `monosemantic train` (it resumes)")
    cfg = read_json(sae_dir / "cfg.json")
    arch = ARCHITECTURES.get(cfg.get("arch", ""))
    if arch is None:
        raise UserError(f"{sae_dir}/cfg.json names an unknown architecture {cfg.get('arch')!r}")
    sae = arch(int(cfg["d_model"]), int(cfg["n_features"]), **cfg.get("hyperparameters", {}))
    path = sae_dir / "sae.safetensors"
    rerun = (
        f"delete it and rerun `monosemantic train` (it rewrites it from {sae_dir.name}/state.pt, "
        "or retrains without one)"
    )
    if "sae_sha256" in cfg and sha256_file(path) != cfg["sae_sha256"]:
        raise UserError(f"{path} is corrupt (checksum mismatch against cfg.json): {rerun}")
    try:
        state = load_file(str(path))
        sae.load_state_dict(state)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path} is corrupt ({e}): {rerun}") from e
    except RuntimeError as e:
        raise UserError(
            f"{sae_dir}/sae.safetensors does not match its cfg.json: delete the folder and retrain"
        ) from e
    return sae.to(device).eval().requires_grad_(False), cfg


@dataclass(frozen=True)
class SaeRun:
    """One dictionary as found under ``saes/<name>/``; empty when a file is not written yet."""

    name: str
    cfg: dict[str, Any]
    """Contents of cfg.json."""
    log: list[dict[str, Any]]
    """Rows of log.jsonl, one per logging step."""
    metrics: dict[str, Any]
    """Contents of metrics.json (written by evaluate)."""

    @property
    def n_features(self) -> int:
        return int(self.metrics.get("n_features") or self.cfg.get("n_features") or 0)

    @property
    def label(self) -> str:
        return f"{self.name} ({self.n_features:,})"


def load_saes(run_dir: Path) -> list[SaeRun]:
    """Every dictionary under ``run_dir/saes``, sorted by number of features, then name."""
    found = []
    for d in sorted(p for p in (run_dir / "saes").glob("*") if p.is_dir()):
        files = [d / "cfg.json", d / "log.jsonl", d / "metrics.json"]
        if not any(f.exists() for f in files):
            continue
        cfg = read_json(files[0]) if files[0].exists() else {}
        metrics = read_json(files[2]) if files[2].exists() else {}
        found.append(SaeRun(d.name, cfg, read_jsonl(files[1]), metrics))
    return sorted(found, key=lambda s: (s.n_features, s.name))
