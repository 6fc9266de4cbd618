"""The ``steer`` and ``inspect`` commands (registered on the main app by ``monosemantic.cli``):
declarations only; the work is in ``stages/steer.py``, the tables in ``terminal.py``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from monosemantic import terminal
from monosemantic.config import GenerateConfig
from monosemantic.errors import UserError
from monosemantic.options import RUN, SAE, ConfigOptions, config_options
from monosemantic.stages import steer as stages


@config_options(GenerateConfig, skip=("batch_size",))
def steer_cmd(
    cfg: ConfigOptions[GenerateConfig],
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
    mode: str = typer.Option("clamp", "--mode", help="clamp or add"),
    prompt: str = typer.Option("", "--prompt", "-p", help="text to continue (not needed with --eval)"),
    sweep: str = typer.Option("", "--sweep", help="scales to compare, e.g. 0,2,5,10,20: one completion each"),
    eval_: bool = typer.Option(
        False, "--eval", help="measure the effect over the neutral prompts and store it in features.sqlite"
    ),
    prompts: Path = typer.Option(None, "--prompts", help="prompts for --eval, one a line (default: bundled)"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda ...; auto picks cuda when available"),
) -> None:
    """Generate with features clamped (or added) at the dictionary's layer, error term kept, and
    compare with the unsteered model: side by side, along a sweep of scales, or measured (--eval)."""
    gen = cfg.build()
    request = stages.SteerRequest(feature, stages.parse_scales(scale, "--scale"), mode)
    request.interventions()  # checked before the model loads
    sweep_scales = stages.parse_scales([sweep], "--sweep") if sweep.strip() else []
    if eval_:
        if len(set(request.scales)) > 1 and not sweep_scales:
            raise UserError("--eval steers every feature at one scale: give one --scale, or --sweep")
        target = stages.open_target(run, sae, device)
        effects = stages.run_steer_eval(
            run, target, request, sweep_scales or request.scales[:1], gen, prompts
        )
        terminal.steer_effects(target.name, effects, gen)
        return
    stages.require_prompt(prompt)
    target = stages.open_target(run, sae, device)
    if sweep_scales:
        features = ", ".join(map(str, dict.fromkeys(feature)))
        rows = stages.run_sweep(target, request, prompt, sweep_scales, gen)
        terminal.steer_sweep(f"{target.name}: {prompt!r}, features {features} ({mode})", rows)
        return
    terminal.steer_side_by_side(stages.run_steer(target, request, prompt, gen))


def inspect_cmd(
    run: Path = RUN,
    text: str = typer.Argument("", help="text to read (or --file)"),
    file: Path = typer.Option(None, "--file", help="read the text from this file"),
    sae: str = SAE,
    per_token: int = typer.Option(5, "--per-token", help="features listed per token"),
    top: int = typer.Option(20, "--top", help="features listed for the whole text"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda ...; auto picks cuda when available"),
) -> None:
    """Show which features fire on a text: per token (with activations and explanations) and over
    the whole text, ranked by activation relative to each feature's maximum."""
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read {file}: {e.strerror}") from e
    result = stages.run_inspect(run, text, sae, per_token, top, device)
    if as_json:
        typer.echo(json.dumps(asdict(result), ensure_ascii=False, indent=1))
    else:
        terminal.inspection(result)


def register(app: typer.Typer) -> None:
    app.command("steer")(steer_cmd)
    app.command("inspect")(inspect_cmd)
