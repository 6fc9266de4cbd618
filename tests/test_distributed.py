"""Data-parallel training with real processes: 2 gloo ranks on this machine."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor

from monosemantic.config import TrainConfig
from monosemantic.distributed import init_from_env
from monosemantic.train import train
from tests.conftest import assert_same_saes, run_torchrun
from tests.test_cli import cli, harvest_args
from tests.test_train import planted

CFG = dict(sizes=[32, 64], batch_size=256, epochs=1.0, log_every=5, checkpoint_every=5, l1_coeff=0.3)
STEPS = 16


class Stop(Exception):
    pass


def batches(stop_at: int | None) -> object:
    _, batches_from = planted(seed=5)

    def gen(step: int) -> Iterator[Tensor]:
        for i, x in enumerate(batches_from(step, batch=256)):
            if stop_at is not None and step + i == stop_at:
                raise Stop
            yield x

    return gen


def train_until(cfg: TrainConfig, run_dir: Path, stop_at: int | None) -> None:
    """Train on the planted stream (as one of the ranks torch.distributed describes, if any),
    stopping with an exception when the stream reaches ``stop_at``."""
    with contextlib.suppress(Stop):
        train(
            cfg,
            batches(stop_at),
            run_dir=run_dir,
            d_model=32,
            n_train_tokens=256 * STEPS,
            scale=1.0,
            meta={},
            dist=init_from_env("cpu"),
        )


def _train(run_dir: Path, stop_at: int | None) -> None:
    train_until(TrainConfig(**CFG), run_dir, stop_at)


def _worker(rank: int, world: int, init_file: str, run_dir: str, stop_at: int | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    _train(Path(run_dir), stop_at)
    dist.barrier()  # tear down together: a rank leaving early aborts its peer's gloo threads
    dist.destroy_process_group()


def train_on(world: int, run_dir: Path, tmp_path: Path, stop_at: int | None = None) -> None:
    if world == 1:
        _train(run_dir, stop_at)
        return
    init = tmp_path / f"init-{run_dir.name}-{stop_at}"
    mp.spawn(_worker, args=(world, str(init), str(run_dir), stop_at), nprocs=world, join=True)


def assert_same_weights(a: Path, b: Path, **tol: float) -> None:
    assert_same_saes(a, b, [f"relu-{n}" for n in CFG["sizes"]], **tol)


TOL = dict(rtol=1e-4, atol=1e-5)


def test_two_ranks_equal_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    train_on(1, tmp_path / "single", tmp_path)
    train_on(2, tmp_path / "ddp", tmp_path)
    assert_same_weights(tmp_path / "single", tmp_path / "ddp", **TOL)
    logs = (tmp_path / "ddp" / "saes" / "relu-32" / "log.jsonl").read_text().splitlines()
    assert len(logs) == 4  # rank 0 alone writes


@pytest.mark.parametrize(("first", "then"), [(2, 1), (1, 2)])
def test_checkpoint_resumes_on_another_world_size(tmp_path: Path, first: int, then: int) -> None:
    train_on(1, tmp_path / "reference", tmp_path)
    run = tmp_path / "run"
    train_on(first, run, tmp_path, stop_at=8)  # stops after the step-5 checkpoint
    assert torch.load(run / "saes" / "relu-32" / "state.pt", weights_only=True)["step"] == 5
    assert not (run / "saes" / "relu-32" / "sae.safetensors").exists()
    train_on(then, run, tmp_path)
    assert_same_weights(tmp_path / "reference", run, **TOL)


def test_torchrun_cli_matches_single_process(
    capsys, monkeypatch, tiny_llama_dir, tiny_corpus, tmp_path
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, tiny_corpus, one))[0] == 0
    shutil.copytree(one, two)
    args = ["train", "--sizes", "16,64", "--train-batch-size", "256", "--epochs", "2", "--l1-coeff", "1"]
    assert cli(capsys, monkeypatch, *args[:1], "--out", str(one), *args[1:])[0] == 0
    proc = run_torchrun(args[0], "--out", str(two), *args[1:])
    assert "on 2 ranks" in proc.stderr
    assert_same_saes(one, two, ["relu-16", "relu-64"], **TOL)
