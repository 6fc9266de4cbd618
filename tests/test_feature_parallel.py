"""Feature-parallel training with real processes (2 gloo ranks): it must follow unsharded training,
and its checkpoints must resume unsharded and the reverse."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from monosemantic.config import TrainConfig
from monosemantic.distributed import DistContext, init_from_env
from monosemantic.errors import UserError
from monosemantic.feature_parallel import FeatureShard, global_topk_mask
from monosemantic.fsio import read_jsonl
from monosemantic.sae import ReluSAE
from tests.helpers import assert_same_saes, cli, on_ranks, run_torchrun, train_until

# grad_clip below the gradient norms seen here, so that the global norm decides every step
BASE = dict(sizes=[32, 64], batch_size=256, epochs=1.0, log_every=5, checkpoint_every=5, grad_clip=0.4)
ARCHS: dict[str, dict[str, Any]] = {
    "relu": dict(l1_coeff=0.3),
    # many features, few active: some die within the run, so that AuxK takes part
    "topk": dict(k=2, k_aux=8, sizes=[32, 256]),
    "batchtopk": dict(k=2, k_aux=8, sizes=[32, 256]),
    # one dictionary of 256 whose 32-prefix is saved too; the ranks split the second group
    "matryoshka": dict(k=2, k_aux=8, sizes=[32, 256]),
    "jumprelu": dict(l1_coeff=0.01, init_threshold=0.05, bandwidth=0.05, preact_coeff=1e-3),
}
# A feature counts as dead after a batch in which it did not fire (not after 100k tokens).
DEAD_WINDOW = 256
TOL = dict(rtol=1e-4, atol=1e-5)
# AuxK weighs ~Var(x) times more than MSE's per-element share, and Adam turns the float-rounding
# differences of the all-reduced sums in near-zero gradients into whole steps: after 16 steps a few
# decoder entries of the sharded BatchTopK differ by ~6e-5 while every logged loss agrees to 1e-7.
TOL_AUXK = dict(rtol=1e-4, atol=2e-4)


def config(arch: str, feature_parallel: bool) -> TrainConfig:
    return TrainConfig(
        **{
            **BASE,
            "arch": arch,
            **ARCHS[arch],
            "feature_parallel": feature_parallel,
            "dead_window": DEAD_WINDOW,
        }
    )


def _train(run_dir: Path, arch: str, feature_parallel: bool, stop_at: int | None) -> None:
    train_until(config(arch, feature_parallel), run_dir, stop_at)


def train_as(
    sharded: bool, run_dir: Path, tmp_path: Path, arch: str = "relu", stop_at: int | None = None
) -> None:
    if sharded:
        on_ranks(2, tmp_path, _train, run_dir, arch, True, stop_at)
    else:
        _train(run_dir, arch, False, stop_at)


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``unsharded(arch)``: the run directory of the architecture trained unsharded in this
    process, trained once for every test that compares against it."""
    done: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in done:
            out = tmp_path_factory.mktemp(f"unsharded-{arch}") / "single"
            train_as(False, out, out.parent, arch)
            done[arch] = out
        return done[arch]

    return get


def assert_same_weights(a: Path, b: Path, arch: str) -> None:
    tol = TOL_AUXK if arch in ("topk", "batchtopk", "matryoshka") else TOL
    assert_same_saes(a, b, [f"{arch}-{n}" for n in config(arch, False).sizes], **tol)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_feature_parallel_equals_unsharded(unsharded: Any, tmp_path: Path, arch: str) -> None:
    train_as(True, tmp_path / "sharded", tmp_path, arch)
    assert_same_weights(unsharded(arch), tmp_path / "sharded", arch)
    n = max(config(arch, False).sizes)
    single, sharded = (
        read_jsonl(run / "saes" / f"{arch}-{n}" / "log.jsonl")
        for run in (unsharded(arch), tmp_path / "sharded")
    )
    assert len(sharded) == len(single) == 4  # rank 0 alone writes
    for a, b in zip(single, sharded, strict=True):  # the logged statistics are global
        for key in ("loss", "mse", "sparsity", "aux", "l0", "variance_explained", "dead_fraction"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    if arch in ("topk", "batchtopk", "matryoshka"):  # AuxK took part, over the dead latents of both ranks
        assert any(row["aux"] > 0 and row["dead_fraction"] > 0 for row in single)


@pytest.mark.slow
@pytest.mark.parametrize("first_sharded", [True, False])
def test_checkpoint_resumes_in_the_other_mode(unsharded: Any, tmp_path: Path, first_sharded: bool) -> None:
    arch = "topk"  # Adam moments, dead-feature counters and AuxK all carry over
    run = tmp_path / "run"
    train_as(first_sharded, run, tmp_path, arch, stop_at=8)  # stops after the step-5 checkpoint
    state = torch.load(run / "saes" / f"{arch}-32" / "state.pt", weights_only=True)
    assert state["step"] == 5 and state["since_fired"].shape == (32,)
    assert state["sae"]["W_dec"].shape == (32, 32) and state["opt"]["state"][0]["exp_avg"].shape == (32, 32)
    assert not (run / "saes" / f"{arch}-32" / "sae.safetensors").exists()
    train_as(not first_sharded, run, tmp_path, arch)
    assert_same_weights(unsharded(arch), run, arch)


def _check_topk_ties() -> None:
    d = init_from_env("cpu")
    assert d is not None
    # Every score tied: the lowest global columns win (rank 0's first, then rank 1's).
    mask = global_topk_mask(torch.zeros(2, 4), 6, d)
    assert mask.sum(1).tolist() == ([4, 4] if d.rank == 0 else [2, 2])
    assert mask[:, :2].all() if d.rank == 1 else mask.all()
    # Random integer scores, many ties: the union over ranks equals a stable top-k of the whole.
    g = torch.Generator().manual_seed(0)
    whole = torch.randint(0, 5, (64, 12), generator=g).float()
    mine = whole[:, d.rank * 6 : (d.rank + 1) * 6]
    for k in (1, 3, 7, 12, 20):
        order = whole.argsort(dim=1, descending=True, stable=True)[:, : min(k, 12)]
        expected = torch.zeros_like(whole, dtype=torch.bool).scatter_(1, order, True)
        got = global_topk_mask(mine, k, d)
        assert torch.equal(got, expected[:, d.rank * 6 : (d.rank + 1) * 6]), k


@pytest.mark.slow
def test_global_topk_breaks_ties_by_lowest_feature(tmp_path: Path) -> None:
    on_ranks(2, tmp_path, _check_topk_ties)


def test_sizes_must_divide_among_ranks() -> None:
    sae = ReluSAE(8, 32)
    with pytest.raises(UserError, match="divisible by 3"):
        FeatureShard.from_full(sae, DistContext(rank=0, world=3))


def test_resample_dead_is_refused() -> None:
    with pytest.raises(UserError, match="--feature-parallel"):
        TrainConfig(resample_dead=True, feature_parallel=True)


@pytest.mark.slow
def test_torchrun_cli_feature_parallel_matches_single_process(
    capsys, monkeypatch, run: Path, tmp_path
) -> None:
    one, two = run, tmp_path / "two"
    shutil.copytree(one, two)
    args = ["--arch", "topk", "--k", "4", "--sizes", "16,64", "--train-batch-size", "256", "--epochs", "2"]
    assert cli(capsys, monkeypatch, "train", "--out", str(one), *args)[0] == 0
    proc = run_torchrun("train", "--feature-parallel", "--out", str(two), *args)
    assert "on 2 ranks, features sharded" in proc.stderr
    assert_same_saes(one, two, ["topk-16", "topk-64"], **TOL)
    code, _ = cli(capsys, monkeypatch, "evaluate", str(two), "--loss-sequences", "2")
    assert code == 0
