"""The ``monosemantic`` command. Options come from the stage dataclasses in ``config.py``."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.table import Table

from monosemantic.config import (
    AnalyzeConfig,
    EvalConfig,
    HarvestConfig,
    ScalingConfig,
    TrainConfig,
    default_of,
    help_of,
    load_stage,
    record_stage,
    resolve_device,
)
from monosemantic.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Extract interpretable features from a transformer with sparse autoencoders.",
)
console = Console(stderr=True, soft_wrap=True)  # one line per message, also in logs


def _opt(cls: type, name: str, *flags: str) -> Any:
    default = default_of(cls, name)
    if isinstance(default, tuple | list):
        default = ",".join(map(str, default))
    return typer.Option(default, *flags, help=help_of(cls, name))


OUT = typer.Option(Path("runs/demo"), "--out", "-o", help="run directory")
RUN = typer.Argument(..., help="run directory (as given to --out)")
FORCE = typer.Option(
    False, "--force", help="discard this stage's earlier output if its configuration differs"
)


def _sizes(text: str, d_model: int) -> list[int]:
    """'512,2048,16384' or multiples of d_model: '4x,16x,64x'."""
    try:
        return [
            int(s[:-1]) * d_model if s.endswith("x") else int(s) for s in map(str.strip, text.split(",")) if s
        ]
    except ValueError as e:
        raise UserError(
            f"--sizes {text!r} must be comma-separated integers or multiples of d_model, "
            "e.g. 512,2048,16384 or 4x,16x,64x"
        ) from e


def _setup_logging() -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)]
    )
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline retries are not news
    transformers.utils.logging.disable_progress_bar()  # our own status line covers model loading


def _load_lm(model: str, device: str, dtype: str = "float32") -> Any:
    from monosemantic.distributed import local_device
    from monosemantic.models import load_model

    with console.status(f"loading model {model} ..."):
        return load_model(model, device=local_device(resolve_device(device)), dtype=dtype)


def _clear_for_force(out: Path, force: bool) -> None:
    if force:  # new activations invalidate everything trained on the old ones
        for stale in ("activations", "saes", "report"):
            shutil.rmtree(out / stale, ignore_errors=True)
        for stale_file in ("features.sqlite", "features.sqlite-wal", "features.sqlite-shm"):
            (out / stale_file).unlink(missing_ok=True)
        (out / "run.toml").unlink(missing_ok=True)


def run_harvest(cfg: HarvestConfig, out: Path, force: bool) -> Any:
    from monosemantic.activations import harvest

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "harvest runs in one process (ranks would write the same shards): run it without "
            "torchrun, or train on the fly under torchrun with `train --model ...`"
        )
    _clear_for_force(out, force)
    record_stage(out, "harvest", cfg, force=force)
    lm = _load_lm(cfg.model, cfg.device, cfg.dtype)
    manifest = harvest(cfg, out, lm)
    h = manifest["harvest"]
    console.print(
        f"harvest: {manifest['n_tokens']:,} activations at layer {manifest['layer']} "
        f"in {out / 'activations'}; "
        f"{h['tokens_per_s']:,.0f} tokens/s, peak RSS {h['peak_rss_mb']:,.0f} MiB"
    )
    for split in manifest.get("exhausted", []):
        console.print(f"[yellow]note: the corpus ran out of {split} text before the requested --tokens")
    return lm


def run_train(
    cfg: TrainConfig, out: Path, force: bool, stream: HarvestConfig | None = None, lm: Any = None
) -> list[Path]:
    """Train from the run's activation store, or on the fly from the model when ``stream`` is given
    (under torchrun, data- or feature-parallel either way)."""
    from monosemantic.activations import ActivationStore, harvest
    from monosemantic.dictionary import sae_name
    from monosemantic.distributed import init_from_env, local_device
    from monosemantic.train import train

    device = local_device(resolve_device(cfg.device))
    dist = init_from_env(device)
    main = dist is None or dist.is_main
    dirs = [out / "saes" / sae_name(cfg.arch, n) for n in cfg.sizes]
    if stream is not None and lm is None:
        lm = _load_lm(stream.model, device, stream.dtype)
    if main:
        if stream is not None:  # the held-out store: evaluation data and the normalisation scale
            _clear_for_force(out, force)
            record_stage(out, "harvest", stream, force=force)
            harvest(stream, out, lm)
        if force:
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
        record_stage(out, f"train.{cfg.arch}", cfg, force=force)
    if dist is not None:
        dist.barrier()  # the other ranks read the store and checkpoints only once rank 0 has set them up
    store = ActivationStore(out)
    if stream is None:
        n_train = store.n_tokens("train")
        batches_from = lambda step: store.batches(cfg.batch_size, cfg.seed, cfg.buffer_shards, step)  # noqa: E731
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
    )
    if dist is not None:
        dist.close()
    if main:
        world = f" on {dist.world} ranks" if dist else ""
        world += ", features sharded" if dist and cfg.feature_parallel else ""
        console.print(meter.summary(f"train ({len(states)} dictionaries in {out / 'saes'}{world})"))
    return dirs


def run_evaluate(
    out: Path, cfg: EvalConfig, lm: Any = None, force: bool = False
) -> dict[str, dict[str, Any]]:
    from monosemantic.evaluate import evaluate

    harvest_cfg = load_stage(out, "harvest")
    saes = sorted((out / "saes").glob("*/cfg.json")) if (out / "saes").is_dir() else []
    if not saes:
        raise UserError(f"{out} has no trained dictionaries: run `monosemantic train --out {out}` first")
    record_stage(out, "evaluate", cfg, force=True)
    lm = (
        lm
        if cfg.loss_sequences <= 0 or lm is not None
        else _load_lm(harvest_cfg.model, cfg.device, harvest_cfg.dtype)
    )
    from monosemantic.activations import ActivationStore

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
    _summary(results)
    if len(reused) == len(results):
        console.print("evaluate: every dictionary's metrics.json is up to date (--force measures again)")
        return results
    m = next(v for k, v in results.items() if k not in reused)["evaluate"]
    console.print(
        f"evaluate: {m['tokens_per_s']:,.0f} tokens/s (activations x dictionaries), "
        f"{m['seconds']:.0f} s, peak RSS {m['peak_rss_mb']:,.0f} MiB"
        + (f"; up to date, kept: {', '.join(reused)}" if reused else "")
    )
    return results


def _summary(results: dict[str, dict[str, Any]]) -> None:
    table = Table(title="dictionaries (held-out activations)")
    for col in ("dictionary", "features", "L0", "var. explained", "dead %", "dense %", "loss recovered"):
        table.add_column(col, justify="right")
    for name, m in sorted(results.items(), key=lambda kv: kv[1]["n_features"]):
        rec = m.get("loss_recovered")
        table.add_row(
            name,
            f"{m['n_features']:,}",
            f"{m['l0']:.1f}",
            f"{m['variance_explained']:.3f}",
            f"{100 * m['dead_fraction']:.1f}",
            f"{100 * m['dense_fraction']:.1f}",
            "n/a" if rec is None else f"{rec:.3f}",
        )
    Console().print(table)


def run_report(out: Path) -> Path:
    from monosemantic.report import build_report

    path = build_report(out)
    console.print(f"report: {path}")
    return path


MODEL = _opt(HarvestConfig, "model", "--model")
LAYER = _opt(HarvestConfig, "layer", "--layer")
CORPUS = _opt(HarvestConfig, "corpus", "--corpus")
TOKENS = _opt(HarvestConfig, "n_tokens", "--tokens")
EVAL_TOKENS = _opt(HarvestConfig, "n_eval_tokens", "--eval-tokens")
SEQ_LEN = _opt(HarvestConfig, "seq_len", "--seq-len")
SIZES = _opt(TrainConfig, "sizes", "--sizes")
L1 = _opt(TrainConfig, "l1_coeff", "--l1-coeff")
LR = _opt(TrainConfig, "lr", "--lr")
TRAIN_BATCH = _opt(TrainConfig, "batch_size", "--train-batch-size")
EPOCHS = _opt(TrainConfig, "epochs", "--epochs")
SEED = _opt(TrainConfig, "seed", "--seed")
DEMO_EXPLAIN = 50
"""Features of the largest dictionary that `demo` explains (a few seconds each on a CPU)."""


@app.command("harvest")
def harvest_cmd(
    out: Path = OUT,
    model: str = MODEL,
    layer: int = LAYER,
    corpus: str = CORPUS,
    tokens: int = TOKENS,
    eval_tokens: int = EVAL_TOKENS,
    seq_len: int = SEQ_LEN,
    batch_size: int = _opt(HarvestConfig, "batch_size", "--batch-size"),
    shard_tokens: int = _opt(HarvestConfig, "shard_tokens", "--shard-tokens"),
    outlier_ratio: float = _opt(HarvestConfig, "outlier_ratio", "--outlier-ratio"),
    eval_fraction: float = _opt(HarvestConfig, "eval_fraction", "--eval-fraction"),
    store_dtype: str = _opt(HarvestConfig, "store_dtype", "--store-dtype"),
    device: str = _opt(HarvestConfig, "device", "--device"),
    dtype: str = _opt(HarvestConfig, "dtype", "--dtype"),
    force: bool = FORCE,
) -> None:
    """Run the model over the corpus and store residual-stream activations at one layer."""
    cfg = HarvestConfig(
        model=model,
        layer=layer,
        corpus=corpus,
        n_tokens=tokens,
        n_eval_tokens=eval_tokens,
        seq_len=seq_len,
        batch_size=batch_size,
        shard_tokens=shard_tokens,
        outlier_ratio=outlier_ratio,
        eval_fraction=eval_fraction,
        store_dtype=store_dtype,
        device=device,
        dtype=dtype,
    )
    run_harvest(cfg, out, force)


@app.command("train")
def train_cmd(
    out: Path = OUT,
    arch: str = _opt(TrainConfig, "arch", "--arch"),
    sizes: str = SIZES,
    l1_coeff: float = L1,
    k: int = _opt(TrainConfig, "k", "--k"),
    k_aux: int = _opt(TrainConfig, "k_aux", "--k-aux"),
    aux_coeff: float = _opt(TrainConfig, "aux_coeff", "--aux-coeff"),
    bandwidth: float = _opt(TrainConfig, "bandwidth", "--bandwidth"),
    init_threshold: float = _opt(TrainConfig, "init_threshold", "--init-threshold"),
    threshold_lr_scale: float = _opt(TrainConfig, "threshold_lr_scale", "--threshold-lr-scale"),
    preact_coeff: float = _opt(TrainConfig, "preact_coeff", "--preact-coeff"),
    dead_window: int = _opt(TrainConfig, "dead_window", "--dead-window"),
    resample_dead: bool = _opt(TrainConfig, "resample_dead", "--resample-dead"),
    b_dec_init: str = _opt(TrainConfig, "b_dec_init", "--b-dec-init"),
    feature_parallel: bool = _opt(TrainConfig, "feature_parallel", "--feature-parallel"),
    lr: float = LR,
    batch_size: int = TRAIN_BATCH,
    epochs: float = EPOCHS,
    seed: int = SEED,
    device: str = _opt(TrainConfig, "device", "--device"),
    model: str | None = typer.Option(
        None,
        "--model",
        help="train on the fly from this model (no activation "
        "store; see `harvest --model`); leave out to train on the run's store",
    ),
    layer: int = LAYER,
    corpus: str = CORPUS,
    tokens: int = TOKENS,
    eval_tokens: int = EVAL_TOKENS,
    seq_len: int = SEQ_LEN,
    window_seqs: int = _opt(HarvestConfig, "window_seqs", "--window-seqs"),
    force: bool = FORCE,
) -> None:
    """Train dictionaries of several sizes on the stored activations (resumes after an interruption).
    With --model, train on the fly straight from the model. Under
    `torchrun --nproc-per-node N -m monosemantic train ...` the ranks train data-parallel, or with
    --feature-parallel each rank holds a slice of every dictionary's features."""
    stream, lm = None, None
    if model is None:
        from monosemantic.activations import ActivationStore

        d_model = ActivationStore(out).d_model
    else:
        stream = HarvestConfig(
            model=model,
            layer=layer,
            corpus=corpus,
            n_tokens=tokens,
            n_eval_tokens=eval_tokens,
            seq_len=seq_len,
            window_seqs=window_seqs,
            on_the_fly=True,
            device=device,
        )
        lm = _load_lm(model, device)
        d_model = lm.d_model
        epochs = 1.0  # the stream never repeats a window; --tokens sets the budget
    cfg = TrainConfig(
        arch=arch,
        sizes=_sizes(sizes, d_model),
        l1_coeff=l1_coeff,
        k=k,
        k_aux=k_aux,
        aux_coeff=aux_coeff,
        bandwidth=bandwidth,
        init_threshold=init_threshold,
        threshold_lr_scale=threshold_lr_scale,
        preact_coeff=preact_coeff,
        dead_window=dead_window,
        resample_dead=resample_dead,
        b_dec_init=b_dec_init,
        feature_parallel=feature_parallel,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        seed=seed,
        device=device,
    )
    run_train(cfg, out, force, stream, lm)


@app.command("evaluate")
def evaluate_cmd(
    run: Path = RUN,
    loss_sequences: int = _opt(EvalConfig, "loss_sequences", "--loss-sequences"),
    device: str = _opt(EvalConfig, "device", "--device"),
    force: bool = typer.Option(False, "--force", help="measure again even where metrics.json is up to date"),
) -> None:
    """Measure L0, variance explained, dead/dense features and spliced next-token loss (a
    dictionary whose metrics.json matches its file, the store and these settings is kept)."""
    run_evaluate(run, EvalConfig(loss_sequences=loss_sequences, device=device), force=force)


@app.command("report")
def report_cmd(run: Path = RUN) -> None:
    """Write the run's HTML report with plots (run/report/index.html)."""
    run_report(run)


def run_scaling(out: Path, cfg: ScalingConfig, force: bool) -> dict[str, Any]:
    """Run (or resume) the sweep, fit the laws into scaling/fits.json, print them."""
    from monosemantic.activations import ActivationStore
    from monosemantic.distributed import init_from_env, local_device
    from monosemantic.fsio import write_json
    from monosemantic.scaling import Sweep, fit_sweep, load_results

    device = local_device(resolve_device(cfg.device))
    dist = init_from_env(device)
    main = dist is None or dist.is_main
    store = ActivationStore(out)
    if main:
        if force:
            shutil.rmtree(out / "scaling", ignore_errors=True)
        record_stage(out, "scaling", cfg, force=force)
    if dist is not None:
        dist.barrier()

    def on_point(row: dict[str, Any], trained: bool) -> None:
        if main:
            how = f"{row['seconds']:.0f} s" if trained else "finished earlier or by another rank"
            console.print(
                f"level {row['level']}: C {row['flops']:.2g} FLOPs  n {row['n_features']:>6,}  "
                f"lr {row['lr']:.2g}  {row['steps']:>5} steps  loss {row['loss']:.4g}  ({how})",
                highlight=False,
            )

    Sweep(cfg, out, store, device, dist, on_point).run()
    if dist is not None:
        dist.close()
    fits = fit_sweep(load_results(out), seed=cfg.seed)
    if main:
        write_json(out / "scaling" / "fits.json", fits)
        _print_fits(fits)
        run_report(out)
    return fits


def _print_fits(fits: dict[str, Any]) -> None:
    table = Table(title="loss-optimal settings per compute level")
    for col in ("compute (FLOPs)", "N_opt", "steps", "LR_opt", "loss"):
        table.add_column(col, justify="right")
    for o in fits["levels"]:
        edge = "" if o["n_fitted"] else " (edge)"
        table.add_row(
            f"{o['flops']:.3g}",
            f"{o['n_opt']:,.0f}{edge}",
            f"{o['steps_opt']:,.0f}",
            f"{o['lr_opt']:.2g}",
            f"{o['loss_opt']:.4g}",
        )
    console.print(table)
    laws = Table(title="power laws y = A · C^a")
    for col in ("quantity", "a", "95% CI", "R²"):
        laws.add_column(col, justify="right")
    for name, law in fits["laws"].items():
        lo, hi = law["ci"]
        laws.add_row(name, f"{law['exponent']:.3f}", f"[{lo:.3f}, {hi:.3f}]", f"{law['r2']:.3f}")
    console.print(laws)


@app.command("scaling")
def scaling_cmd(
    run: Path = RUN,
    recommend: bool = typer.Option(
        False, "--recommend", help="print the settings the fits predict for --flops"
    ),
    flops: float = typer.Option(0.0, "--flops", help="compute budget in training FLOPs, for --recommend"),
    arch: str = _opt(ScalingConfig, "arch", "--arch"),
    l1_coeff: float = _opt(ScalingConfig, "l1_coeff", "--l1-coeff"),
    k: int = _opt(ScalingConfig, "k", "--k"),
    levels: int = _opt(ScalingConfig, "levels", "--levels"),
    decades: float = _opt(ScalingConfig, "decades", "--decades"),
    min_flops: float = _opt(ScalingConfig, "min_flops", "--min-flops"),
    budget: float = _opt(ScalingConfig, "budget", "--budget"),
    sizes_per_level: int = _opt(ScalingConfig, "sizes_per_level", "--sizes-per-level"),
    lr: float = _opt(ScalingConfig, "lr", "--lr"),
    lr_factor: float = _opt(ScalingConfig, "lr_factor", "--lr-factor"),
    max_extend: int = _opt(ScalingConfig, "max_extend", "--max-extend"),
    batch_size: int = _opt(ScalingConfig, "batch_size", "--batch-size"),
    eval_tokens: int = _opt(ScalingConfig, "eval_tokens", "--eval-tokens"),
    seed: int = SEED,
    device: str = _opt(ScalingConfig, "device", "--device"),
    force: bool = FORCE,
) -> None:
    """Sweep dictionary size x steps x learning rate over compute (IsoFLOP profiles) on the run's
    store, fit power laws for the optimal size, steps and learning rate, and plot them (resumes a
    killed sweep; under torchrun the points are shared among the ranks). With --recommend --flops F,
    print what the fits predict for a budget of F FLOPs."""
    if recommend:
        _recommend(run, flops)
        return
    cfg = ScalingConfig(
        arch=arch,
        l1_coeff=l1_coeff,
        k=k,
        levels=levels,
        decades=decades,
        min_flops=min_flops,
        budget=budget,
        sizes_per_level=sizes_per_level,
        lr=lr,
        lr_factor=lr_factor,
        max_extend=max_extend,
        batch_size=batch_size,
        eval_tokens=eval_tokens,
        seed=seed,
        device=device,
    )
    run_scaling(run, cfg, force)


def _recommend(run: Path, flops: float) -> None:
    from monosemantic.fsio import read_json
    from monosemantic.scaling import recommend

    path = run / "scaling" / "fits.json"
    if not path.is_file():
        raise UserError(f"{run} has no fitted scaling laws: run `monosemantic scaling {run}` first")
    if flops <= 0:
        raise UserError("--recommend needs a positive compute budget: --flops 1e15")
    fits = read_json(path)
    rec = recommend(fits, flops)
    table = Table(title=f"recommended for C = {flops:.3g} training FLOPs")
    table.add_column("setting")
    table.add_column("value", justify="right")
    table.add_row("dictionary size", f"{rec['n_features']:,.0f} features")
    table.add_row("training steps", f"{rec['steps']:,.0f} (batch {fits['batch_size']})")
    table.add_row("training tokens", f"{rec['steps'] * fits['batch_size']:,.0f}")
    table.add_row("learning rate", f"{rec['lr']:.3g}")
    table.add_row("expected loss", f"{rec['loss']:.4g}")
    console.print(table)
    lo, hi = fits["flops_range"]
    if rec["extrapolation"] > 10:
        console.print(
            f"[yellow]warning:[/] {flops:.3g} FLOPs is {rec['extrapolation']:,.0f}x outside the measured "
            f"range {lo:.3g}–{hi:.3g}: the prediction is an extrapolation; rerun the sweep with --budget "
            "to measure closer",
            highlight=False,
        )
    else:
        console.print(
            f"extrapolation factor {rec['extrapolation']:.2g}x (measured range {lo:.3g}–{hi:.3g} FLOPs)"
        )


@app.command("demo")
def demo_cmd(
    out: Path = OUT,
    tokens: int = TOKENS,
    model: str = MODEL,
    layer: int = LAYER,
    corpus: str = CORPUS,
    sizes: str = SIZES,
    epochs: float = EPOCHS,
    l1_coeff: float = L1,
    device: str = _opt(HarvestConfig, "device", "--device"),
    features: bool = typer.Option(
        True,
        "--features/--no-features",
        help="also analyze every dictionary, rank the safety catalog and explain "
        f"{DEMO_EXPLAIN} features of the largest",
    ),
    force: bool = FORCE,
) -> None:
    """Every stage on the embedded default: harvest, train three sizes, evaluate, analyze the
    features, report. (`harvest`, `train` and `analyze` take more settings.)"""
    eval_tokens = max(2_000, min(default_of(HarvestConfig, "n_eval_tokens"), tokens // 10))
    hcfg = HarvestConfig(
        model=model, layer=layer, corpus=corpus, n_tokens=tokens, n_eval_tokens=eval_tokens, device=device
    )
    lm = run_harvest(hcfg, out, force)
    tcfg = TrainConfig(sizes=_sizes(sizes, lm.d_model), epochs=epochs, l1_coeff=l1_coeff, device=device)
    run_train(tcfg, out, force)
    run_evaluate(out, EvalConfig(device=device), lm, force)
    if features:
        from monosemantic.features.cli import run_analyze, run_catalog, run_explain

        run_analyze(out, AnalyzeConfig(device=device), force)
        run_catalog(out)
        if not run_explain(out, features=DEMO_EXPLAIN):
            console.print("[yellow]note: no feature has held-out contexts to explain: harvest more --tokens")
        from monosemantic.steer_cli import run_demo_steering

        run_demo_steering(out, lm)
    run_report(out)


# The feature commands (analyze, feature, search, ...) live beside their code; they use the helpers above.
from monosemantic.features.cli import register as _register_feature_commands  # noqa: E402

_register_feature_commands(app)
from monosemantic.steer_cli import register as _register_steer_commands  # noqa: E402

_register_steer_commands(app)


def main() -> None:
    _setup_logging()
    try:
        # Without standalone mode typer re-raises our errors; a Ctrl-C comes back as exit code 130.
        code = app(standalone_mode=False)
    except UserError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (KeyboardInterrupt, click.exceptions.Abort):
        code = 130
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    if code == 130:
        console.print(
            "[yellow]interrupted:[/] rerun the same command to resume where it stopped", soft_wrap=True
        )
    if isinstance(code, int) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
