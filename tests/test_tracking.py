"""Experiment tracking (tracking.py): the training log and scaling points also go to TensorBoard
event files and W&B (offline), each behind its flag; without the package the flag is a one-line
error."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import typer

from monosemantic.cli import app
from monosemantic.config import TrackingConfig
from monosemantic.options import cli_fields, flag_of
from monosemantic.tracking import Tracker, scalars
from tests.helpers import TRAIN, cli


def test_train_and_scaling_offer_the_tracking_flags() -> None:
    group = typer.main.get_command(app)
    for command in ("train", "scaling"):
        opts = {o: p for p in group.commands[command].params for o in getattr(p, "opts", [])}
        for f in cli_fields(TrackingConfig):
            assert opts[flag_of(f)].help == f.metadata["help"], (command, f.name)


def test_scalars_keep_finite_numbers_only() -> None:
    row = {"step": 3, "loss": 0.5, "ok": True, "nan": float("nan"), "name": "x", "train": {"a": 1}}
    assert scalars(row) == {"step": 3.0, "loss": 0.5}


def test_nothing_enabled_does_nothing(tmp_path: Path) -> None:
    t = Tracker(TrackingConfig(), tmp_path, "train", {})
    t.log("relu-16", {"loss": 1.0}, 1)
    t.close()
    assert not t.enabled and not list(tmp_path.iterdir())


def test_a_missing_backend_is_a_one_line_error(capsys, monkeypatch, run: Path) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--wandb", "proj")
    assert code == 2 and "pip install wandb" in err and len(err.strip().splitlines()) == 1


def test_training_log_goes_to_tensorboard(capsys, monkeypatch, run: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard (the [tensorboard] extra) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--log-every", "5", "--tensorboard")
    assert code == 0, err
    for name in ("relu-16", "relu-64"):
        log = [json.loads(line) for line in (run / "saes" / name / "log.jsonl").read_text().splitlines()]
        events = EventAccumulator(str(run / "tensorboard" / name))
        events.Reload()
        assert {"loss", "l0", "variance_explained", "dead_fraction"} <= set(events.Tags()["scalars"])
        loss = events.Scalars("loss")
        assert [e.step for e in loss] == [r["step"] for r in log if "loss" in r]
        assert [e.value for e in loss] == pytest.approx([r["loss"] for r in log if "loss" in r])


def test_training_log_goes_to_wandb_offline(capsys, monkeypatch, run: Path) -> None:
    pytest.importorskip("wandb", reason="wandb (the [wandb] extra) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    code, err = cli(capsys, monkeypatch, "train", "--out", run, *TRAIN, "--wandb", "monosemantic-test")
    assert code == 0, err
    (offline,) = (run / "wandb").glob("offline-run-*")
    (records,) = offline.glob("*.wandb")  # protobuf records; the keys are stored as plain bytes
    deadline = time.monotonic() + 60
    while b"relu-64/loss" not in (data := records.read_bytes()) and time.monotonic() < deadline:
        time.sleep(0.2)  # wandb-core may still be writing the file when finish() returns
    assert b"monosemantic-test" in data and b"run-train-relu" in data
    for key in ("loss", "l0", "variance_explained"):
        assert f"relu-16/{key}".encode() in data and f"relu-64/{key}".encode() in data


def test_wandb_run_receives_the_values(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason="wandb (the [wandb] extra) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = Tracker(TrackingConfig(wandb="monosemantic-test"), tmp_path / "run", "scaling", {"levels": 4})
    for step in range(3):
        t.log("scaling", {"loss": 1.0 / (step + 1), "n_features": 64 * 2**step, "name": "c0"}, step)
    # a step is committed when a later one arrives (rows of several dictionaries share a step)
    assert t.wandb_run.summary["scaling/loss"] == pytest.approx(1 / 2)
    assert t.wandb_run.summary["scaling/n_features"] == 128
    assert t.wandb_run.config["levels"] == 4
    t.close()
