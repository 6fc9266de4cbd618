"""`demo --preset`: a preset fills the settings left at their defaults, never one typed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from monosemantic.config import HarvestConfig, TrainConfig
from monosemantic.errors import UserError
from monosemantic.options import option_defaults
from monosemantic.stages.presets import PRESETS, resolve
from tests.helpers import main_exit_code


def test_full_preset_fills_defaults_and_keeps_what_was_typed() -> None:
    defaults = option_defaults(TrainConfig)
    assert defaults["sizes"] == "512,2048,16384"
    given = {"sizes": defaults["sizes"], "epochs": 2.0, "l1_coeff": defaults["l1_coeff"]}
    out = resolve("full", given, defaults, "train")
    assert out == {**given, "sizes": "4x,16x,64x", "arch": "batchtopk", "k": 64}
    typed = resolve("full", {**given, "sizes": "128,256"}, defaults, "train")
    assert typed["sizes"] == "128,256" and typed["arch"] == "batchtopk"
    harvest = resolve("full", {"n_tokens": 200_000}, option_defaults(HarvestConfig), "harvest")
    assert harvest["n_tokens"] == PRESETS["full"].harvest["n_tokens"] == 1_000_000
    assert resolve("demo", given, defaults, "train") == given
    with pytest.raises(UserError, match="--preset 'huge'"):
        resolve("huge", given, defaults, "train")


@pytest.mark.slow
def test_demo_full_preset_on_the_tiny_model(
    capsys, monkeypatch, tiny_llama_dir, tiny_corpus, tmp_path
) -> None:
    """The preset's architecture and k reach the trainer; sizes and tokens typed here win (the real
    preset, 1M tokens and 36,864 features, is for a long run)."""
    out = tmp_path / "full"
    args = ["demo", "--preset", "full", "--out", out, "--model", tiny_llama_dir, "--corpus", tiny_corpus,
            "--tokens", "4000", "--sizes", "128,256", "--no-features"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["monosemantic", *map(str, args)])
    assert main_exit_code() == 0, capsys.readouterr().err
    for n in (128, 256):
        cfg = json.loads(Path(out / "saes" / f"batchtopk-{n}" / "cfg.json").read_text())
        assert cfg["arch"] == "batchtopk" and cfg["n_features"] == n
        assert (out / "saes" / f"batchtopk-{n}" / "metrics.json").is_file()
    assert "k = 64" in (out / "run.toml").read_text()
