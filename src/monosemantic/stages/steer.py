"""Steering and inspection of a run's analysed dictionary: the work behind the ``steer`` and
``inspect`` commands (and the web app's playground and "analyse a text")."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

from monosemantic.bounds import check_int
from monosemantic.config import GenerateConfig
from monosemantic.errors import UserError
from monosemantic.runlock import writes_run
from monosemantic.stages.common import check_run, load_run_lm
from monosemantic.steer import MODES, Intervention


def parse_scales(values: list[str], flag: str) -> list[float]:
    """'10' or '0,2,5' (repeatable) -> floats.

    Raises:
        UserError: naming ``flag``, for an item that is not a finite number, or none at all.
    """
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


class SteerRequest(NamedTuple):
    """What to steer: features, each with its scale (a multiple of its max activation), and how."""

    features: list[int]
    scales: list[float]
    """one scale for every feature, or one per feature"""
    mode: str = "clamp"
    """clamp or add (see ``steer.Intervention``)"""

    def interventions(self) -> list[Intervention]:
        """Raises UserError for a bad mode or a scale count that matches neither 1 nor the features."""
        if not self.features:
            raise UserError("give a feature to steer: --feature ID")
        if len(self.scales) not in (1, len(self.features)):
            raise UserError(
                f"give --scale once or once per --feature ({len(self.features)}), "
                f"not {len(self.scales)} times"
            )
        if self.mode not in MODES:
            raise UserError(f"unknown --mode {self.mode!r}: use one of {', '.join(MODES)}")
        for j in self.features:
            check_int("--feature", j, 0)
        return [
            Intervention(j, self.scales[i % len(self.scales)], self.mode) for i, j in enumerate(self.features)
        ]


def require_prompt(prompt: str) -> None:
    """Raises UserError for an empty prompt."""
    if not prompt.strip():
        raise UserError(
            "the prompt is empty: give --prompt 'text to continue' (or --eval for the neutral prompts)"
        )


def open_target(run: Path, sae: str, device: str = "auto") -> Any:
    """The run's model and analysed dictionary ``sae`` ('' = the largest) ready to steer
    (``steer_eval.SteerTarget``)."""
    from monosemantic.steer_eval import load_target

    check_run(run)
    return load_target(run, sae, load_run_lm(run, device))


class SideBySide(NamedTuple):
    base: Any
    """``steer_score.Completion`` of the clean model"""
    steered: Any
    """the steered one (error term as ``cfg.keep_error`` says)"""
    interventions: list[Intervention]


def run_steer(
    target: Any,
    request: SteerRequest,
    prompt: str,
    cfg: GenerateConfig,
    on_token: Callable[[str, int], None] | None = None,
) -> SideBySide:
    """The unsteered and steered completions of ``prompt``, both scored by the clean model; the
    unsteered one first. ``on_token("base" | "steered", token id)`` sees each token as it comes
    (the web app streams them)."""
    from monosemantic.steer_eval import run_completions

    ivs = request.interventions()
    require_prompt(prompt)
    watch = list(dict.fromkeys(request.features))

    def tell(which: str) -> Callable[[int, int], None] | None:
        return None if on_token is None else lambda _, token: on_token(which, token)

    base = run_completions(target, [prompt], [], replace(cfg, keep_error=True), watch, tell("base"))[0]
    steered = run_completions(target, [prompt], ivs, cfg, watch, tell("steered"))[0]
    return SideBySide(base, steered, ivs)


def run_sweep(
    target: Any, request: SteerRequest, prompt: str, scales: list[float], cfg: GenerateConfig
) -> list[tuple[float | None, Any]]:
    """(scale, completion) for each scale, every requested feature steered at it, after
    (None, the clean model's completion): the baseline, which scale 0 is not (clamp 0 ablates)."""
    from monosemantic.steer_eval import run_completions

    ivs = request.interventions()
    require_prompt(prompt)
    watch = list(dict.fromkeys(request.features))
    base = run_completions(target, [prompt], [], replace(cfg, keep_error=True), watch)[0]
    return [(None, base)] + [
        (s, run_completions(target, [prompt], [iv._replace(scale=s) for iv in ivs], cfg, watch)[0])
        for s in scales
    ]


@writes_run("run", "steer --eval")
def run_steer_eval(
    run: Path,
    target: Any,
    request: SteerRequest,
    scales: list[float],
    cfg: GenerateConfig,
    prompts: Path | None = None,
) -> list[Any]:
    """The measured effect (``steer_eval.Effect`` per feature and scale) over the neutral prompts
    (or ``prompts``, one a line), stored in the run's features.sqlite for the report."""
    from monosemantic.steer_eval import load_prompts, measure, settings_key, store_effects

    request.interventions()  # the checks
    texts = load_prompts(prompts)
    effects = measure(target, request.features, scales, texts, cfg, request.mode)
    store_effects(run, target.name, effects, settings_key(target, texts, cfg))
    return effects


def run_demo_steering(run: Path, lm: Any) -> tuple[str, list[Any], GenerateConfig]:
    """The demo's steering example: a context feature ``search`` finds for ``DEMO_QUERIES``, clamped over
    the neutral prompts, measured and stored (the report shows it). Returns (dictionary, effects,
    settings); no effects when search finds no such feature."""
    from monosemantic.steer_eval import DEMO_SCALE, demo_steering

    cfg = GenerateConfig(max_new_tokens=24)
    found = demo_steering(run, lm, cfg, DEMO_SCALE)
    return ("", [], cfg) if found is None else (found[0], found[1], cfg)


def run_inspect(
    run: Path, text: str, sae: str = "", per_token: int = 5, top: int = 20, device: str = "auto"
) -> Any:
    """Which features fire on ``text``, per token and over the whole text
    (``features.inspect.Inspection``).

    Raises:
        UserError: empty text, no such run or analysed dictionary, a count below 0.
    """
    from monosemantic.features.inspect import open_inspector

    check_int("--per-token", per_token, 0)
    check_int("--top", top, 0)
    check_run(run)
    if not text.strip():
        raise UserError("the text is empty: give some text to inspect, or --file PATH")
    inspector = open_inspector(run, sae, load_run_lm(run, device))
    try:
        return inspector.inspect(text, per_token=per_token, top=top)
    finally:
        inspector.con.close()
