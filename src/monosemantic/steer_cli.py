"""The ``steer`` and ``inspect`` commands (registered on the main app by ``monosemantic.cli``): they
parse options and render; the work is in ``monosemantic.steer``, ``monosemantic.steer_eval`` and
``monosemantic.features.inspect``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from monosemantic.config import default_of, help_of, load_stage
from monosemantic.errors import UserError
from monosemantic.models import LoadedModel
from monosemantic.steer import MODES, GenerateConfig, Intervention
from monosemantic.steer_score import Completion

RUN = typer.Argument(..., help="run directory (as given to --out)")
SAE = typer.Option("", "--sae", help="dictionary, e.g. relu-2048 (default: the largest analysed one)")


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist: give the --out of an earlier harvest/train")


def _opt(name: str, flag: str) -> Any:
    return typer.Option(default_of(GenerateConfig, name), flag, help=help_of(GenerateConfig, name))


def _load_lm(model: str, device: str, dtype: str) -> LoadedModel:
    # imported here: monosemantic.cli imports this module to register its commands
    from monosemantic.cli import _load_lm as load

    return load(model, device, dtype)


def _console() -> Console:
    """stdout, at least 140 columns wide so that tables keep their numbers when piped to a file."""
    return Console(highlight=False, width=max(Console().width, 140))


def parse_scales(values: list[str], flag: str) -> list[float]:
    """'10' or '0,2,5' (repeatable) -> floats; a UserError names the flag otherwise."""
    out = []
    for v in values:
        for part in v.split(","):
            try:
                x = float(part)
            except ValueError as e:
                raise UserError(
                    f"{flag} {part.strip()!r} is not a number: give e.g. {flag} 10 or 0,2,5"
                ) from e
            if not math.isfinite(x):
                raise UserError(f"{flag} must be a finite number, not {part.strip()!r}")
            out.append(x)
    if not out:
        raise UserError(f"{flag} is empty: give e.g. {flag} 10")
    return out


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None or math.isnan(x) else format(x, spec)


def _label(ivs: list[Intervention]) -> str:
    return ", ".join(f"#{iv.feature} {iv.mode} {iv.scale:g}×max" for iv in ivs)


def _fires(c: Completion) -> str:
    return " ".join(f"{round(f * c.n_tokens)}/{c.n_tokens}" for f in c.fire_fraction)


def _side_by_side(base: Completion, steered: Completion, ivs: list[Intervention]) -> None:
    table = Table(title=f"prompt: {base.prompt!r}", show_lines=True)
    table.add_column("unsteered", ratio=1)
    table.add_column(f"steered: {_label(ivs)}", ratio=1)
    table.add_row(base.text, steered.text)
    table.add_row(
        f"clean log-prob {base.logprob:.1f} ({base.logprob_per_token:.2f}/token)",
        f"clean log-prob {steered.logprob:.1f} ({steered.logprob_per_token:.2f}/token)",
    )
    table.add_row(f"feature fires on {_fires(base)} tokens", f"feature fires on {_fires(steered)} tokens")
    console = _console()
    console.print(table)
    console.print(
        f"effect: the steered feature{'s' if len(ivs) > 1 else ''} fire{'' if len(ivs) > 1 else 's'} on "
        f"{_fires(steered)} generated tokens (unsteered {_fires(base)}) when the clean model rereads "
        "the text; "
        f"promoted tokens' log-mass {_fmt(steered.promoted_logmass)} vs {_fmt(base.promoted_logmass)}; "
        f"log-prob/token {steered.logprob_per_token:.2f} vs {base.logprob_per_token:.2f}"
    )


def steer_cmd(
    run: Path = RUN,
    sae: str = SAE,
    feature: list[int] = typer.Option(
        ..., "--feature", "-f", help="feature id to steer (repeat for several)"
    ),
    scale: list[str] = typer.Option(
        ["10"],
        "--scale",
        help="multiple of the feature's max activation: clamp to it (0 or below ablates) "
        "or add it along the decoder direction; once, or once per --feature",
    ),
    mode: str = typer.Option("clamp", "--mode", help=f"one of {', '.join(MODES)}"),
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue (not needed with --eval)"),
    sweep: str = typer.Option("", "--sweep", help="scales to compare, e.g. 0,2,5,10,20: one completion each"),
    eval_: bool = typer.Option(
        False, "--eval", help="measure the effect over the neutral prompts and store it in features.sqlite"
    ),
    prompts: Path = typer.Option(None, "--prompts", help="prompts for --eval, one a line (default: bundled)"),
    drop_error: bool = typer.Option(False, "--drop-error", help="drop the error term: x' = decode(f')"),
    generated_only: bool = typer.Option(
        False, "--generated-only", help="leave the prompt alone: edit its last token and the generated ones"
    ),
    max_new_tokens: int = _opt("max_new_tokens", "--max-new-tokens"),
    temperature: float = _opt("temperature", "--temperature"),
    seed: int = _opt("seed", "--seed"),
    chat: bool = typer.Option(False, "--chat", help="wrap prompts in the chat template (instruct models)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto"),
) -> None:
    """Generate with features clamped (or added) at the dictionary's layer, error term kept, and
    compare with the unsteered model: side by side, along a sweep of scales, or measured (--eval)."""
    from monosemantic.steer_eval import (
        load_prompts,
        load_target,
        measure,
        run_completions,
        settings_key,
        store_effects,
    )

    _check_run(run)
    scales = parse_scales(scale, "--scale")
    sweep_scales = parse_scales([sweep], "--sweep") if sweep.strip() else []
    if len(scales) not in (1, len(feature)):
        raise UserError(f"give --scale once or once per --feature ({len(feature)}), not {len(scales)} times")
    if mode not in MODES:
        raise UserError(f"unknown --mode {mode!r}: use one of {', '.join(MODES)}")
    if not eval_ and not prompt.strip():
        raise UserError(
            "the prompt is empty: give --prompt 'text to continue' (or --eval for the neutral prompts)"
        )
    cfg = GenerateConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        chat=chat,
        keep_error=not drop_error,
        steer_prompt=not generated_only,
    )
    harvest = load_stage(run, "harvest")
    target = load_target(run, sae, _load_lm(harvest.model, device, harvest.dtype))
    ivs = [Intervention(j, scales[i % len(scales)], mode) for i, j in enumerate(feature)]
    console = _console()
    if eval_:
        texts = load_prompts(prompts)
        if len(set(scales)) > 1 and not sweep_scales:
            raise UserError("--eval steers every feature at one scale: give one --scale, or --sweep")
        effects = measure(target, feature, sweep_scales or scales[:1], texts, cfg, mode)
        store_effects(run, target.name, effects, settings_key(target, texts, cfg))
        print_effects(console, target.name, effects, cfg)
        return
    watch = list(dict.fromkeys(feature))
    if sweep_scales:
        table = Table(
            title=f"{target.name}: {prompt!r}, features {', '.join(map(str, watch))} ({mode})",
            show_lines=True,
        )
        for col in ("scale", "completion", "log-prob/token", "fires on"):
            table.add_column(col, justify="left" if col == "completion" else "right")
        for s in sweep_scales:
            ivs_s = [iv._replace(scale=s) for iv in ivs]
            c = run_completions(target, [prompt], ivs_s, cfg, watch)[0]
            table.add_row(f"{s:g}", c.text, f"{c.logprob_per_token:.2f}", _fires(c))
        console.print(table)
        return
    base = run_completions(target, [prompt], [], replace(cfg, keep_error=True), watch)[0]
    steered = run_completions(target, [prompt], ivs, cfg, watch)[0]
    _side_by_side(base, steered, ivs)


def print_effects(console: Console, sae: str, effects: list, cfg: GenerateConfig) -> None:
    """The effect table of ``steer --eval`` (and of the demo's example)."""
    n = effects[0].n_prompts if effects else 0
    table = Table(
        title=f"{sae}: steering over {n} neutral prompts, {cfg.max_new_tokens} new tokens, "
        f"error term {'kept' if cfg.keep_error else 'dropped'}",
        caption="fires: share of completions on which the feature fires (clean model rereads them); "
        "rel: its largest activation / its max; promoted: log Σ p of its promoted tokens; "
        "log-prob: per generated token (clean model)",
    )
    for col in (
        "feature",
        "mode",
        "scale",
        "fires",
        "base",
        "rel",
        "base",
        "promoted",
        "base",
        "log-prob",
        "base",
    ):
        table.add_column(col, justify="right")
    for e in effects:
        table.add_row(
            str(e.feature), e.mode, f"{e.scale:g}", f"{e.fire_rate:.2f}", f"{e.base_fire_rate:.2f}",
            f"{e.relative:.2f}", f"{e.base_relative:.2f}",
            _fmt(e.promoted_logmass), _fmt(e.base_promoted_logmass),
            f"{e.logprob:.2f}", f"{e.base_logprob:.2f}",
        )  # fmt: skip
    console.print(table)
    seen = set()
    for e in effects:  # the first prompt's completion at each scale
        if e.scale not in seen:
            seen.add(e.scale)
            console.print(f"example at scale {e.scale:g}: {e.example!r}")
    if effects:
        console.print(f"unsteered: {effects[0].base_example!r}")


def run_demo_steering(run: Path, lm: LoadedModel) -> None:
    """The demo's steering example (the city feature search finds for "Berlin", over the neutral
    prompts), printed and stored for the report."""
    from monosemantic.steer_eval import DEMO_SCALE, demo_steering

    cfg = GenerateConfig(max_new_tokens=24)
    found = demo_steering(run, lm, cfg, DEMO_SCALE)
    console = _console()
    if found is None:
        console.print("[yellow]note: no feature fires specifically on 'Berlin': no steering example")
        return
    print_effects(console, *found, cfg)


def inspect_cmd(
    run: Path = RUN,
    text: str = typer.Argument("", help="text to read (or --file)"),
    file: Path = typer.Option(None, "--file", help="read the text from this file"),
    sae: str = SAE,
    per_token: int = typer.Option(5, "--per-token", help="features listed per token"),
    top: int = typer.Option(20, "--top", help="features listed for the whole text"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, auto"),
) -> None:
    """Show which features fire on a text: per token (with activations and explanations) and over
    the whole text, ranked by activation relative to each feature's maximum."""
    from monosemantic.features.inspect import open_inspector

    _check_run(run)
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read {file}: {e.strerror}") from e
    if not text.strip():
        raise UserError("the text is empty: give some text to inspect, or --file PATH")
    harvest = load_stage(run, "harvest")
    inspector = open_inspector(run, sae, _load_lm(harvest.model, device, harvest.dtype))
    try:
        result = inspector.inspect(text, per_token=per_token, top=top)
    finally:
        inspector.con.close()
    if as_json:
        typer.echo(json.dumps(asdict(result), ensure_ascii=False, indent=1))
        return
    console = _console()
    table = Table(title=f"{result.sae}: features per token")
    for col in ("pos", "token", "features (activation, share of max, explanation)"):
        table.add_column(col, justify="right" if col == "pos" else "left")
    for t in result.tokens:
        cells = [
            f"#{f.feature} {f.activation:.2f} ({_fmt(f.relative)}) {f.explanation or ''}".rstrip()
            for f in t.features
        ]
        table.add_row(str(t.position), repr(t.token), "\n".join(cells))
    console.print(table)
    summary = Table(title="most active over the text, relative to each feature's max")
    for col in ("feature", "max", "share of max", "tokens", "peak", "explanation"):
        summary.add_column(col, justify="left" if col == "explanation" else "right")
    for f in result.top:
        summary.add_row(
            str(f.feature), f"{f.max_activation:.2f}", f"{f.relative:.2f}", str(f.n_tokens),
            repr(result.tokens[f.peak - 1].token), f.explanation or "",
        )  # fmt: skip
    console.print(summary)
    console.print(
        f"{len(result.tokens)} tokens read in {1000 * result.seconds:.0f} ms (forward to the layer + encode)"
    )


def register(app: typer.Typer) -> None:
    app.command("steer")(steer_cmd)
    app.command("inspect")(inspect_cmd)
