"""Data-parallel training with real processes: 2 gloo ranks on this machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from monosemantic.config import TrainConfig
from tests.helpers import assert_same_saes, cli, on_ranks, run_torchrun, train_until

pytestmark = pytest.mark.slow  # every test spawns two ranks

CFG = dict(sizes=[32, 64], batch_size=256, epochs=1.0, log_every=5, checkpoint_every=5, l1_coeff=0.3)


def _train(run_dir: Path, stop_at: int | None) -> None:
    train_until(TrainConfig(**CFG), run_dir, stop_at)


def train_on(world: int, run_dir: Path, tmp_path: Path, stop_at: int | None = None) -> None:
    if world == 1:
        _train(run_dir, stop_at)
    else:
        on_ranks(world, tmp_path, _train, run_dir, stop_at)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole training in one process, once for every test that compares against it."""
    out = tmp_path_factory.mktemp("reference") / "single"
    train_on(1, out, out.parent)
    return out


def assert_same_weights(a: Path, b: Path, **tol: float) -> None:
    assert_same_saes(a, b, [f"relu-{n}" for n in CFG["sizes"]], **tol)


TOL = dict(rtol=1e-4, atol=1e-5)


def test_two_ranks_equal_one_process_with_the_same_global_batch(reference: Path, tmp_path: Path) -> None:
    train_on(2, tmp_path / "ddp", tmp_path)
    assert_same_weights(reference, tmp_path / "ddp", **TOL)
    logs = (tmp_path / "ddp" / "saes" / "relu-32" / "log.jsonl").read_text().splitlines()
    assert len(logs) == 4  # rank 0 alone writes


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_checkpoint_resumes_on_another_world_size(
    reference: Path, tmp_path: Path, first: int, then: int
) -> None:
    run = tmp_path / "run"
    train_on(first, run, tmp_path, stop_at=8)  # stops after the step-5 checkpoint
    assert torch.load(run / "saes" / "relu-32" / "state.pt", weights_only=True)["step"] == 5
    assert not (run / "saes" / "relu-32" / "sae.safetensors").exists()
    train_on(then, run, tmp_path)
    assert_same_weights(reference, run, **TOL)


def test_torchrun_cli_matches_single_process(capsys, monkeypatch, run: Path, tmp_path) -> None:
    one, two = run, tmp_path / "two"
    shutil.copytree(one, two)
    args = ["train", "--sizes", "16,64", "--train-batch-size", "256", "--epochs", "2", "--l1-coeff", "1"]
    assert cli(capsys, monkeypatch, *args[:1], "--out", str(one), *args[1:])[0] == 0
    proc = run_torchrun(args[0], "--out", str(two), *args[1:])
    assert "on 2 ranks" in proc.stderr
    assert_same_saes(one, two, ["relu-16", "relu-64"], **TOL)
