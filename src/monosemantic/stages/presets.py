"""Named sets of `demo` settings (``monosemantic demo --preset NAME``): a preset replaces the
settings the user left at their defaults, never one typed on the command line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monosemantic.errors import UserError


@dataclass(frozen=True)
class Preset:
    help: str
    harvest: dict[str, Any] = field(default_factory=dict)
    """HarvestConfig fields (command-line text for list fields)."""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields, including those `demo` does not offer as options (arch, k)."""


PRESETS = {
    "demo": Preset("the quick demo: 200k tokens, three ReLU sizes (about 12 minutes on 2 CPU cores)"),
    "full": Preset(
        "a larger run: the first 1M tokens of the corpus (a prefix mixes every source and language, "
        "docs/data.md), BatchTopK k=64 (the best variance explained at L0 <= 64 in "
        "docs/architectures.md) at 4x/16x/64x d_model (2,304 / 9,216 / 36,864 features for the "
        "default model); measured at about 48 min on 2 CPU cores (README, Full run)",
        harvest={"n_tokens": 1_000_000},
        train={"arch": "batchtopk", "k": 64, "sizes": "4x,16x,64x"},
    ),
}


def resolve(name: str, given: dict[str, Any], defaults: dict[str, Any], section: str) -> dict[str, Any]:
    """The preset's ``section`` ('harvest' or 'train') values for the fields whose ``given`` value
    is still the default, then every other given value; fields only the preset sets are added.

    Raises:
        UserError: no such preset.
    """
    if name not in PRESETS:
        raise UserError(f"--preset {name!r} is not one of {', '.join(PRESETS)}")
    preset: dict[str, Any] = getattr(PRESETS[name], section)
    out = dict(given)
    for key, value in preset.items():
        if key not in given or given[key] == defaults.get(key):
            out[key] = value
    return out
