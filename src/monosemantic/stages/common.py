"""What several stages load from a run directory: the model the activations came from, a trained
dictionary, the analysed dictionary a command refers to."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, NamedTuple

from monosemantic.config import load_stage, resolve_device
from monosemantic.errors import UserError
from monosemantic.progress import status


def load_lm(model: str, device: str, dtype: str = "float32") -> Any:
    """Load ``model`` (see ``models.load_model``) on this process's device, with a status line."""
    from monosemantic.distributed import local_device
    from monosemantic.models import load_model

    with status(f"loading model {model} ..."):
        return load_model(model, device=local_device(resolve_device(device)), dtype=dtype)


def load_run_lm(run: Path, device: str = "cpu") -> Any:
    """The model and dtype the run's activations were harvested with.

    Raises:
        UserError: the run has no harvest stage.
    """
    harvest = load_stage(run, "harvest")
    return load_lm(harvest.model, device, harvest.dtype)


def check_run(run: Path) -> None:
    """Raises UserError when ``run`` is not a directory."""
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist: give the --out of an earlier harvest/train")


def clear_for_force(out: Path, force: bool) -> None:
    """With ``force``, delete everything derived from the activations (they are about to change)."""
    if force:
        for stale in ("activations", "saes", "report"):
            shutil.rmtree(out / stale, ignore_errors=True)
        for stale_file in ("features.sqlite", "features.sqlite-wal", "features.sqlite-shm"):
            (out / stale_file).unlink(missing_ok=True)
        (out / "run.toml").unlink(missing_ok=True)


def harvested(out: Path) -> bool:
    """Whether a harvest wrote its manifest: until then its run.toml entry binds nothing, so a
    failed start can be rerun with other settings without --force."""
    return (out / "activations" / "manifest.json").is_file()


class RunDictionary(NamedTuple):
    """A trained dictionary of a run, with what it needs to meet the model."""

    name: str
    sae: Any
    """the SparseAutoencoder, acting on raw activations"""
    cfg: dict[str, Any]
    """its cfg.json"""
    layer: int
    """the residual stream it reads: hidden_states[layer]"""


def load_run_dictionary(run: Path, name: str, device: str = "cpu") -> RunDictionary:
    """``run/saes/<name>`` loaded (see ``dictionary.load_dictionary`` for the errors raised)."""
    from monosemantic.dictionary import load_dictionary

    sae, cfg = load_dictionary(run / "saes" / name, device)
    return RunDictionary(name, sae, cfg, int(cfg["layer"]))


def store_d_model(run: Path) -> int:
    """The width of the run's stored activations (for sizes given as multiples of d_model).

    Raises:
        UserError: the run has no activation store.
    """
    from monosemantic.activations import ActivationStore

    return ActivationStore(run).d_model


def model_d_model(model: str) -> int:
    """The residual width of ``model`` from its config alone (no weights loaded), so that sizes
    given as multiples of d_model are checked before anything slow starts."""
    from monosemantic.models import model_info

    return model_info(model).d_model
