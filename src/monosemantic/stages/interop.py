"""import and export: another library's dictionary into a run directory, and a run's dictionary
out to another library's format (``interop/``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from monosemantic.config import ExportConfig, HarvestConfig, ImportConfig, record_stage
from monosemantic.errors import UserError
from monosemantic.runlock import writes_run
from monosemantic.stages.common import clear_for_force, load_lm


class ImportResult(NamedTuple):
    name: str
    """the dictionary's folder name under saes/"""
    format: str
    arch: str
    n_features: int
    model: str
    layer: int
    hook: str
    """the source's hook name the layer was mapped from"""
    manifest: dict[str, Any]
    """the run's activations/manifest.json (the held-out store evaluate and analyze read)"""


def resolve_model(source_model: str, given: str, path: Path) -> str:
    """--model, else the model the source names.

    Raises:
        UserError: neither names one.
    """
    if given:
        return given
    if not source_model:
        raise UserError(f"{path} names no model: pass --model (a folder, .gguf file or hub id)")
    from monosemantic.models import from_hub_id

    return from_hub_id(source_model)


@writes_run("out", "import", creates=True)
def run_import(
    path: Path, out: Path, cfg: ImportConfig, harvest_cfg: HarvestConfig, force: bool
) -> ImportResult:
    """Read the dictionary at ``path``, check it against its model, harvest the run's activation
    store at its layer (resumes; kept when already there) and save it as ``out/saes/<name>``.

    Raises:
        UserError: an unreadable or unrepresentable source (see ``interop``), a model that is not
            available (the message says to pass --model), a layer the model lacks, a width that is
            not the model's, or a dictionary of that name already in the run (without ``force``).
    """
    from monosemantic.activations import harvest
    from monosemantic.dictionary import sae_name, save_dictionary
    from monosemantic.interop import read_dictionary
    from monosemantic.interop.hooks import check_layer, layer_of_hook

    foreign = read_dictionary(path, cfg.format)
    model = resolve_model(foreign.model, cfg.model, path)
    try:
        lm = load_lm(model, harvest_cfg.device, harvest_cfg.dtype)
    except UserError as e:
        if cfg.model:
            raise
        raise UserError(
            f"{path} was trained on {model!r}, which cannot be loaded here ({e}): pass --model with "
            "a local folder (or hub id) of that model"
        ) from e
    layer = cfg.layer if cfg.layer >= 0 else layer_of_hook(foreign.hook)
    check_layer(layer, lm.n_layers, foreign.hook or f"--layer {layer}")
    if foreign.sae.d_model != lm.d_model:
        raise UserError(
            f"{path} reads vectors of width {foreign.sae.d_model}, but {model} has d_model "
            f"{lm.d_model}: pass the --model it was trained on"
        )
    name = cfg.name or sae_name(foreign.sae.arch, foreign.sae.n_features)
    sae_dir = out / "saes" / name
    if (sae_dir / "sae.safetensors").exists() and not force:
        raise UserError(
            f"{sae_dir} already exists: pass --name to import beside it, or --force to replace it"
        )
    hcfg = dataclasses.replace(harvest_cfg, model=model, layer=layer)
    clear_for_force(out, force)  # with force: the run starts over, as `harvest --force` does
    record_stage(out, "harvest", hcfg, force=force)  # refuses another model or layer in one line
    manifest = harvest(hcfg, out, lm)
    shutil.rmtree(sae_dir, ignore_errors=True)
    sae_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": model,
        "layer": layer,
        "seq_len": hcfg.seq_len,
        "imported_from": {
            "format": foreign.format,
            "path": str(path.resolve()),
            "hook": foreign.hook,
            **foreign.notes,
        },
    }
    save_dictionary(foreign.sae, sae_dir, meta, scale=1.0)
    return ImportResult(
        name, foreign.format, foreign.sae.arch, foreign.sae.n_features, model, layer, foreign.hook, manifest
    )


class ExportResult(NamedTuple):
    sae: str
    format: str
    dest: Path
    files: list[Path]


def pick_dictionary(run: Path, name: str) -> str:
    """``name``, or the run's largest dictionary.

    Raises:
        UserError: the run has no such dictionary, or none.
    """
    saes = (
        sorted(p.parent.name for p in (run / "saes").glob("*/sae.safetensors"))
        if (run / "saes").is_dir()
        else []
    )
    if name:
        if name not in saes:
            raise UserError(
                f"{run} has no dictionary {name!r} (it has {', '.join(saes) or 'none'}): pass --sae"
            )
        return name
    if not saes:
        raise UserError(f"{run} has no trained dictionary: run `monosemantic train` or `import` first")
    from monosemantic.fsio import read_json

    return max(saes, key=lambda s: (int(read_json(run / "saes" / s / "cfg.json").get("n_features", 0)), s))


def run_export(run: Path, cfg: ExportConfig) -> ExportResult:
    """Write a dictionary of ``run`` in ``cfg.format`` (see ``interop``).

    Raises:
        UserError: no such dictionary, or one the format cannot hold.
    """
    from monosemantic.interop import dictionary_learning, neuronpedia, saelens, sparsify
    from monosemantic.interop.base import ExportMeta
    from monosemantic.stages.common import check_run, load_run_dictionary

    check_run(run)
    name = pick_dictionary(run, cfg.sae)
    d = load_run_dictionary(run, name)
    from monosemantic.models import hub_id

    meta = ExportMeta(name, hub_id(str(d.cfg.get("model", ""))), d.layer, int(d.cfg.get("seq_len", 128)))
    dest = Path(cfg.dest) if cfg.dest else run / "export" / cfg.format / name
    if cfg.format == "neuronpedia":
        files = neuronpedia.write(d.sae, meta, dest, run, vectors=cfg.vectors)
    else:
        writer = {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": dictionary_learning}[
            cfg.format
        ]
        files = writer.write(d.sae, meta, dest)
    return ExportResult(name, cfg.format, dest, files)
