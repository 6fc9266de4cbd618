"""The ``monosemantic`` command: declarations only. Options come from the stage dataclasses in
``config.py`` (``options.py``), the work from ``stages/``, the tables from ``terminal.py``."""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from monosemantic import terminal
from monosemantic.bounds import check_float
from monosemantic.config import (
    AnalyzeConfig,
    CatalogConfig,
    EvalConfig,
    ExplainConfig,
    ExportConfig,
    HarvestConfig,
    ImportConfig,
    ScalingConfig,
    TrackingConfig,
    TrainConfig,
)
from monosemantic.errors import UserError
from monosemantic.options import FORCE, OUT, RUN, ConfigOptions, config_options, parse_list
from monosemantic.stages.common import model_d_model, store_d_model
from monosemantic.stages.pipeline import run_evaluate, run_harvest, run_report, run_train
from monosemantic.stages.scaling import run_recommend, run_scaling
from monosemantic.terminal import console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Extract interpretable features from a transformer with sparse autoencoders.",
)

DEMO_EXPLAIN = 50
"""Features of the largest dictionary that `demo` explains (a few seconds each on a CPU)."""

STREAM_FIELDS = ("model", "layer", "corpus", "n_tokens", "n_eval_tokens", "seq_len", "window_seqs", "device")
"""The harvest settings `train --model` takes to train on the fly."""


def sizes_of(text: str, d_model: int) -> list[int]:
    """'512,2048,16384' or multiples of d_model: '4x,16x,64x'.

    Raises:
        UserError: an item is neither.
    """
    try:
        return [
            int(s[:-1]) * d_model if s.endswith("x") else int(s) for s in parse_list(text, str, "--sizes")
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


@app.command("harvest")
@config_options(HarvestConfig)
def harvest_cmd(cfg: ConfigOptions[HarvestConfig], out: Path = OUT, force: bool = FORCE) -> None:
    """Run the model over the corpus and store residual-stream activations at one layer."""
    terminal.harvest_done(out, run_harvest(cfg.build(), out, force).manifest)


@app.command("train")
@config_options(HarvestConfig, "stream", only=STREAM_FIELDS)
@config_options(TrainConfig)
@config_options(TrackingConfig, "tracking")
def train_cmd(
    cfg: ConfigOptions[TrainConfig],
    stream: ConfigOptions[HarvestConfig],
    tracking: ConfigOptions[TrackingConfig],
    out: Path = OUT,
    model: str | None = typer.Option(
        None,
        "--model",
        help="train on the fly from this model (no activation "
        "store; see `harvest --model`); leave out to train on the run's store",
    ),
    force: bool = FORCE,
) -> None:
    """Train dictionaries of several sizes on the stored activations (resumes after an interruption).
    With --model, train on the fly straight from the model. Under
    `torchrun --nproc-per-node N -m monosemantic train ...` the ranks train data-parallel, or with
    --feature-parallel each rank holds a slice of every dictionary's features."""
    if model is None:
        # the harvest settings of on-the-fly training would be ignored by a training from the store
        # --device is shared with TrainConfig, --model is the command's own option
        given = [flag for name, flag in stream.changed() if name not in ("device", "model")]
        if given:
            raise UserError(
                f"{given[0]} applies to on-the-fly training (--model); without --model, train reads "
                "the run's store: drop it (fewer of its tokens: --epochs)"
            )
        sizes = sizes_of(cfg["sizes"], store_d_model(out))
        result = run_train(cfg.build(sizes=sizes), out, force, tracking=tracking.build())
    else:
        stream_cfg = stream.build(on_the_fly=True)
        d_model = model_d_model(model)  # the config alone: options are checked before loading
        # the stream never repeats a window: --tokens sets the budget, not --epochs
        tcfg = cfg.build(sizes=sizes_of(cfg["sizes"], d_model), epochs=1.0)
        result = run_train(tcfg, out, force, stream_cfg, tracking=tracking.build())
    if result.summary:
        console.print(result.summary)


@app.command("evaluate")
@config_options(EvalConfig)
def evaluate_cmd(
    cfg: ConfigOptions[EvalConfig],
    run: Path = RUN,
    force: bool = typer.Option(False, "--force", help="measure again even where metrics.json is up to date"),
) -> None:
    """Measure L0, variance explained, dead/dense features and spliced next-token loss (a
    dictionary whose metrics.json matches its file, the store and these settings is kept)."""
    terminal.evaluate_done(*run_evaluate(run, cfg.build(), force=force))


@app.command("report")
def report_cmd(run: Path = RUN) -> None:
    """Write the run's HTML report with plots (run/report/index.html)."""
    console.print(f"report: {run_report(run)}")


@app.command("scaling")
@config_options(ScalingConfig)
@config_options(TrackingConfig, "tracking")
def scaling_cmd(
    cfg: ConfigOptions[ScalingConfig],
    tracking: ConfigOptions[TrackingConfig],
    run: Path = RUN,
    recommend: bool = typer.Option(
        False, "--recommend", help="print the settings the fits predict for --flops"
    ),
    flops: float = typer.Option(0.0, "--flops", help="compute budget in training FLOPs, for --recommend"),
    force: bool = FORCE,
) -> None:
    """Sweep dictionary size x steps x learning rate over compute (IsoFLOP profiles) on the run's
    store, fit power laws for the optimal size, steps and learning rate, and plot them (resumes a
    killed sweep; under torchrun the points are shared among the ranks). With --recommend --flops F,
    print what the fits predict for a budget of F FLOPs."""
    check_float("--flops", flops, 0.0)
    if recommend:
        terminal.recommendation(*run_recommend(run, flops), flops)
        return
    fits = run_scaling(run, cfg.build(), force, on_point=terminal.scaling_point, tracking=tracking.build())
    if fits is not None:
        terminal.scaling_fits(fits)
        console.print(f"report: {run / 'report' / 'index.html'}")


@app.command("demo")
@config_options(HarvestConfig, "harvest", only=("model", "layer", "corpus", "n_tokens", "device"))
@config_options(TrainConfig, "train", only=("sizes", "epochs", "l1_coeff", "device"))
def demo_cmd(
    harvest: ConfigOptions[HarvestConfig],
    train: ConfigOptions[TrainConfig],
    out: Path = OUT,
    features: bool = typer.Option(
        True,
        "--features/--no-features",
        help="also analyze every dictionary, rank the safety catalog and explain "
        f"{DEMO_EXPLAIN} features of the largest",
    ),
    force: bool = FORCE,
    preset: str = typer.Option(
        "demo", "--preset", help="demo (quick) or full (1M tokens, BatchTopK up to 36,864 features, README)"
    ),
) -> None:
    """Every stage on the embedded default: harvest, train three sizes, evaluate, analyze the
    features, report. (`harvest`, `train` and `analyze` take more settings.)"""
    from monosemantic.options import option_defaults
    from monosemantic.stages.presets import resolve

    harvest.values = resolve(preset, harvest.values, option_defaults(HarvestConfig), "harvest")
    train.values = resolve(preset, train.values, option_defaults(TrainConfig), "train")
    default_eval = HarvestConfig().n_eval_tokens
    hcfg = harvest.build(n_eval_tokens=max(2_000, min(default_eval, harvest["n_tokens"] // 10)))
    # every setting is checked before the harvest starts
    tcfg = train.build(sizes=sizes_of(train["sizes"], model_d_model(hcfg.model)))
    manifest, lm = run_harvest(hcfg, out, force)
    terminal.harvest_done(out, manifest)
    summary = run_train(tcfg, out, force).summary
    console.print(summary)
    evaluated = run_evaluate(out, EvalConfig(device=hcfg.device), lm, force)
    terminal.evaluate_done(*evaluated)
    if features:
        from monosemantic.stages.features import run_analyze, run_catalog, run_explain

        terminal.analyze_done(out, run_analyze(out, AnalyzeConfig(device=hcfg.device), force))
        catalog = run_catalog(out, CatalogConfig())
        terminal.say(
            f"catalog: {len(catalog.rows)} probe-set features of {catalog.sae} ranked (`catalog` prints them)"
        )
        explained = run_explain(out, ExplainConfig(n_features=DEMO_EXPLAIN, again=True))
        if not explained.results:
            console.print("[yellow]note: no feature has held-out contexts to explain: harvest more --tokens")
        terminal.say(f"explain: {len(explained.results)} features of {explained.sae} explained and scored")
        from monosemantic.stages.steer import run_demo_steering

        terminal.steer_effects(*run_demo_steering(out, lm))
    report = run_report(out)
    if not features:
        console.print(f"report: {report}")
        return
    from monosemantic.stages.summary import run_demo_summary

    terminal.demo_summary(run_demo_summary(out, evaluated.metrics, report, lm))


@app.command("import")
@config_options(HarvestConfig, "harvest", skip=("model", "layer"))
@config_options(ImportConfig)
def import_cmd(
    cfg: ConfigOptions[ImportConfig],
    harvest: ConfigOptions[HarvestConfig],
    path: Path = typer.Argument(..., help="folder of a SAELens, sparsify or dictionary_learning dictionary"),
    out: Path = OUT,
    force: bool = FORCE,
) -> None:
    """Import another library's dictionary into a run (and harvest the run's activations at its
    layer), so that evaluate, analyze, search, steer and report work on it."""
    from monosemantic.stages.interop import run_import

    result = run_import(path, out, cfg.build(), harvest.build(), force)
    terminal.harvest_done(out, result.manifest)
    terminal.import_done(out, result)


@app.command("export")
@config_options(ExportConfig)
def export_cmd(cfg: ConfigOptions[ExportConfig], run: Path = RUN) -> None:
    """Write a dictionary of the run in another library's format (saelens, sparsify,
    dictionary_learning) or its analysed features for Neuronpedia."""
    from monosemantic.stages.interop import run_export

    terminal.export_done(run_export(run, cfg.build()))


@app.command("serve")
def serve_cmd(
    runs: list[Path] = typer.Argument(..., help="run directories to serve"),
    port: int = typer.Option(8000, "--port", help="TCP port"),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="interface to listen on (beyond loopback: needs --token, or makes one)",
    ),
    token: str = typer.Option("", "--token", help="every route needs this token (?token=, cookie or Bearer)"),
    open_browser: bool = typer.Option(False, "--open", help="open the browser on the first page"),
    workers: int = typer.Option(
        1, "--workers", help="server processes (pages scale with cores; each loads its own model when needed)"
    ),
) -> None:
    """Browse the runs' features in a web browser: overview, feature pages, search, map, catalog,
    steering, and a JSON API under /api/ (read-only; the model is loaded when a page needs it)."""
    from monosemantic.stages.serve import run_serve

    run_serve(runs, host, port, token, open_browser, lambda p: terminal.serving(len(runs), p), workers)


# The feature commands (analyze, feature, search, ...) are declared beside their stages' docs.
from monosemantic.features.cli import register as _register_feature_commands  # noqa: E402

_register_feature_commands(app)
from monosemantic.steer_cli import register as _register_steer_commands  # noqa: E402

_register_steer_commands(app)


class _Interrupted(BaseException):
    """Ctrl-C inside a command, carried past click: click versions differ in what they make of a
    KeyboardInterrupt (exit 130, or "Aborted!" and exit 1); this one is ours to report."""


def _interruptible(callback: Any) -> Any:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt as e:
            raise _Interrupted from e

    return run


def main() -> None:
    _setup_logging()
    group = typer.main.get_command(app)
    for command in getattr(group, "commands", {}).values():
        if command.callback is not None:
            command.callback = _interruptible(command.callback)
    # typer >= 0.29 vendors its own click (typer.core._click), older ones use click itself: the
    # exceptions to catch are those of the click that typer runs on.
    click_ = getattr(typer.core, "_click", None) or importlib.import_module("click")
    try:
        try:
            # Not standalone: usage errors come back to us as exceptions and are printed on one line
            # (typer's own form is a five-line box); --help and success return an exit status.
            code = group.main(prog_name="monosemantic", standalone_mode=False)
        except click_.exceptions.UsageError as e:
            message = e.format_message().strip().rstrip(".")
            if not message:  # bare `monosemantic`: the group printed its help
                sys.exit(e.exit_code)
            where = e.ctx.command_path if e.ctx is not None else "monosemantic"
            console.print(
                f"[bold red]error:[/] {escape(message)} (see `{escape(where)} --help`)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(e.exit_code)
        except click_.exceptions.ClickException as e:
            text = escape(e.format_message())
            console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            console.print("[yellow]aborted[/]", soft_wrap=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
    except SystemExit as e:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # A torchrun rank whose work is done (files closed, process group destroyed) leaves
            # without interpreter finalization: there gloo's worker threads can still hold tensors
            # and abort the process ("terminate called without an active exception", rc -6).
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        raise
    except UserError as e:
        console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (_Interrupted, KeyboardInterrupt):
        console.print(
            "[yellow]interrupted:[/] rerun the same command to resume where it stopped", soft_wrap=True
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
