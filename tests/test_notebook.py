"""The notebook API (``monosemantic.open_run``): docs/notebook.md's example runs as written on a
tiny run, and each lookup fails with a one-line UserError that says what to run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import monosemantic
from monosemantic.errors import UserError
from tests.helpers import TRAIN, cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "notebook.md"


@pytest.fixture
def analysed(capsys, monkeypatch, run: Path) -> Path:
    """The tiny run trained, evaluated and analysed (what `demo` leaves)."""
    for args in (
        ["train", "--out", run, *TRAIN],
        ["evaluate", run, "--loss-sequences", "4"],
        ["analyze", run, "--before", "6", "--after", "3"],
    ):
        code, err = cli(capsys, monkeypatch, *args)
        assert code == 0, err
    return run


def test_the_documented_example_runs(analysed: Path, monkeypatch, tmp_path: Path, capsys) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(analysed)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, str(DOC), "exec"), {})
    out = capsys.readouterr().out
    assert "Run('runs/demo', dictionaries=['relu-16', 'relu-64'])" in out and "core: cosine" in out


def test_lookups(analysed: Path) -> None:
    run = monosemantic.open_run(analysed)
    assert run.dictionaries == ["relu-16", "relu-64"]
    assert run.metrics()["n_features"] == 64 and "ce_loss_score" in run.metrics("relu-16")["core"]
    enc = run.encode("the code has a buffer overflow", sae="relu-16")
    assert enc.feats.shape == (len(enc.tokens), 16) and enc.tokens[:2] == ["the", "code"]
    # the same activations as the dictionary on the residual the model computes
    from monosemantic.models import capture_residual

    ids = run.model.tokenizer("the code has a buffer overflow", return_tensors="pt")["input_ids"]
    acts = capture_residual(run.model, 2, ids)[0]
    assert (run.dictionary("relu-16").encode(acts)[1] == enc.feats).all()
    top = enc.top(3)
    f = run.feature(top[0][0], sae="relu-16")
    assert f.id == top[0][0] and f.stats["n_fired"] > 0 and f.top and f.top[0].activation > 0


def test_errors_say_what_to_run(tmp_path: Path, run: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        monosemantic.open_run(tmp_path / "nowhere")
    fresh = monosemantic.open_run(run)  # harvested only
    with pytest.raises(UserError, match="monosemantic train"):
        fresh.metrics()
    with pytest.raises(UserError, match="monosemantic train"):
        fresh.steer("hello", {0: 5.0})


def test_steer(analysed: Path) -> None:
    """Run.steer gives the steered completion the steer stage gives, and says what is wrong."""
    from monosemantic.config import GenerateConfig
    from monosemantic.stages.steer import SteerRequest, run_steer
    from monosemantic.steer_eval import load_target

    run = monosemantic.open_run(analysed)
    text = run.steer("the code of", {5: 20.0, 9: -1.0}, sae="relu-64", max_new_tokens=5)
    target = load_target(analysed, "relu-64", run.model)
    side = run_steer(
        target, SteerRequest([5, 9], [20.0, -1.0]), "the code of", GenerateConfig(max_new_tokens=5)
    )
    assert text == side.steered.text and len(side.steered.token_ids) <= 5
    assert run.steer("the code of", {5: 0.5}, sae="relu-64", mode="add", max_new_tokens=3) is not None
    for call, message in [
        (lambda: run.steer("hi", {64: 5.0}, sae="relu-64"), "ids run from 0 to 63"),
        (lambda: run.steer("hi", {1: 5.0}, sae="relu-64", mode="pull"), "unknown --mode"),
        (lambda: run.steer("hi", {1: 5.0}, max_tokens=3), "unknown steering setting 'max_tokens'"),
        (lambda: run.steer("  ", {1: 5.0}), "prompt is empty"),
        (lambda: run.steer("hi", {}), "give a feature"),
    ]:
        with pytest.raises(UserError, match=message):
            call()
