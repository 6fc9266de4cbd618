"""The spine: harvest, train, evaluate, report."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from monosemantic.config import (
    EvalConfig,
    HarvestConfig,
    TrackingConfig,
    TrainConfig,
    load_stage,
    record_stage,
    resolve_device,
)
from monosemantic.errors import UserError
from monosemantic.memory import check_train_memory
from monosemantic.runlock import writes_run
from monosemantic.stages.common import (
    check_run,
    clear_for_force,
    harvested,
    load_lm,
    model_d_model,
    store_d_model,
)


class HarvestResult(NamedTuple):
    manifest: dict[str, Any]
    """activations/manifest.json: n_tokens, layer, harvest throughput, splits the corpus ran out of"""
    lm: Any
    """the loaded model, for the stages that follow in the same process"""


@writes_run("out", "harvest", creates=True)
def run_harvest(cfg: HarvestConfig, out: Path, force: bool) -> HarvestResult:
    """Harvest the activations of ``cfg`` into ``out/activations`` (resumes an interrupted one).

    Raises:
        UserError: under torchrun (harvest runs in one process), or a setting differs from the
            run's earlier harvest without ``force``.
    """
    from monosemantic.activations import check_inputs, harvest

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "harvest runs in one process (ranks would write the same shards): run it without "
            "torchrun, or train on the fly under torchrun with `train --model ...`"
        )
    check_inputs(cfg)  # before anything is written: a failed start must not need --force
    clear_for_force(out, force)
    record_stage(out, "harvest", cfg, force=force or not harvested(out))
    lm = load_lm(cfg.model, cfg.device, cfg.dtype)
    return HarvestResult(harvest(cfg, out, lm), lm)


class TrainResult(NamedTuple):
    dirs: list[Path]
    """one saes/<name> folder per size"""
    summary: str | None
    """the throughput line of rank 0 (None on the other ranks)"""


@writes_run("out", "train", creates=True)
def run_train(
    cfg: TrainConfig,
    out: Path,
    force: bool,
    stream: HarvestConfig | None = None,
    lm: Any = None,
    tracking: TrackingConfig | None = None,
) -> TrainResult:
    """Train from the run's activation store, or on the fly from the model when ``stream`` is given
    (under torchrun, data- or feature-parallel either way); rank 0 also sends the training log to
    the trackers ``tracking`` enables."""
    from monosemantic.activations import ActivationStore, check_inputs, harvest
    from monosemantic.dictionary import sae_name
    from monosemantic.distributed import init_from_env, local_device
    from monosemantic.train import train

    device = local_device(resolve_device(cfg.device))
    dist = init_from_env(device)
    main = dist is None or dist.is_main
    dirs = [out / "saes" / sae_name(cfg.arch, n) for n in cfg.sizes]
    if stream is not None:
        check_inputs(stream)
    d_model = model_d_model(stream.model) if stream is not None else store_d_model(out)
    shards = dist.world if dist is not None and cfg.feature_parallel else 1
    check_train_memory(d_model, list(cfg.sizes), cfg.batch_size, device, shards)
    if stream is not None and lm is None:
        lm = load_lm(stream.model, device, stream.dtype)
    if main:
        if stream is not None:  # the held-out store: evaluation data and the normalisation scale
            clear_for_force(out, force)
            record_stage(out, "harvest", stream, force=force or not harvested(out))
            harvest(stream, out, lm)
        if force:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        # a failed start binds nothing, but any dictionary of this architecture trained or begun
        # (other sizes included) binds the recorded settings
        started = any(
            (d / "state.pt").is_file() or (d / "sae.safetensors").is_file()
            for d in (out / "saes").glob(f"{cfg.arch}-*")
        )
        record_stage(out, f"train.{cfg.arch}", cfg, force=force or not started)
    if dist is not None:
        dist.barrier()  # the other ranks read the store and checkpoints only once rank 0 has set them up
    store = ActivationStore(out)
    if stream is None:
        n_train = store.n_tokens("train")
        batches_from = store.batch_source(cfg)
    else:
        from monosemantic.stream import ActivationStream

        assert lm is not None
        source = ActivationStream(
            lm,
            int(store.manifest["layer"]),
            stream.corpus,
            seq_len=stream.seq_len,
            window_seqs=stream.window_seqs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            outlier_ratio=stream.outlier_ratio,
            eval_fraction=stream.eval_fraction,
            harvest_batch_size=stream.batch_size,
            dist=dist,
        )
        n_train = stream.n_tokens
        batches_from = lambda step: source.batches(store.scale, step)  # noqa: E731
    meta = {k: store.manifest[k] for k in ("model", "layer", "seq_len")}
    from monosemantic.tracking import Tracker

    tracking = tracking if main and tracking is not None else TrackingConfig()  # rank 0 tracks
    tracker = Tracker(tracking, out, f"train-{cfg.arch}", {**asdict(cfg), **meta})
    try:
        states, meter = train(
            cfg,
            batches_from,
            run_dir=out,
            d_model=store.d_model,
            n_train_tokens=n_train,
            scale=store.scale,
            meta=meta,
            device=device,
            dist=dist,
            on_log=lambda name, row: tracker.log(name, row, row["step"]),
        )
    finally:
        tracker.close()
    if dist is not None:
        dist.close()
    if not main:
        return TrainResult(dirs, None)
    if meter.count == 0:
        done = f"train: every dictionary in {out / 'saes'} is trained (--force trains again)"
        return TrainResult(dirs, done)
    world = f" on {dist.world} ranks" if dist else ""
    world += ", features sharded" if dist and cfg.feature_parallel else ""
    what = "1 dictionary" if len(states) == 1 else f"{len(states)} dictionaries"
    return TrainResult(dirs, meter.summary(f"train ({what} in {out / 'saes'}{world})"))


class EvalResult(NamedTuple):
    metrics: dict[str, dict[str, Any]]
    """dictionary name -> its metrics.json"""
    reused: list[str]
    """dictionaries whose metrics.json was up to date and kept"""


@writes_run("out", "evaluate")
def run_evaluate(out: Path, cfg: EvalConfig, lm: Any = None, force: bool = False) -> EvalResult:
    """Measure every dictionary of the run (see ``evaluate.evaluate``).

    Raises:
        UserError: the run has no harvest stage or no trained dictionary.
    """
    from monosemantic.activations import ActivationStore
    from monosemantic.evaluate import evaluate

    harvest_cfg = load_stage(out, "harvest")
    saes = sorted((out / "saes").glob("*/cfg.json")) if (out / "saes").is_dir() else []
    if not saes:
        raise UserError(f"{out} has no trained dictionaries: run `monosemantic train --out {out}` first")
    record_stage(out, "evaluate", cfg, force=True)
    if cfg.loss_sequences > 0 and lm is None:
        lm = load_lm(harvest_cfg.model, cfg.device, harvest_cfg.dtype)
    layer = int(ActivationStore(out).manifest["layer"])
    results, reused = evaluate(
        out,
        cfg,
        device=resolve_device(cfg.device),
        lm=lm,
        layer=layer,
        sae_dirs=[p.parent for p in saes],
        force=force,
    )
    return EvalResult(results, sorted(reused))


@writes_run("out", "report")
def run_report(out: Path) -> Path:
    """Write ``out/report/index.html`` with its figures; returns its path.

    Raises:
        UserError: ``out`` is not a run directory.
    """
    from monosemantic.report import build_report

    check_run(out)
    return build_report(out)
