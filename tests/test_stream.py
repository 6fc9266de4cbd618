"""On-the-fly training: batches straight from the model, resumable, evaluable, data-parallel."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import monosemantic.stream as stream_mod
from monosemantic.models import load_model
from monosemantic.stream import ActivationStream
from tests.helpers import assert_same_saes, cli, run_cli, run_torchrun, sigint_at, tiny_io


def otf_args(model: Path, corpus: Path, out: Path) -> list[str]:
    rest = (
        "--tokens 3000 --eval-tokens 600 --window-seqs 40 --sizes 16,64 --train-batch-size 256 --l1-coeff 1"
    )
    return ["train", *tiny_io(model, corpus, out), *rest.split()]


def weights(run: Path, n: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "saes" / f"relu-{n}" / "sae.safetensors"))


def test_stream_batches_depend_only_on_the_step(tiny_llama_dir: Path, tiny_corpus: Path) -> None:
    lm = load_model(str(tiny_llama_dir))
    src = ActivationStream(
        lm,
        2,
        str(tiny_corpus),
        seq_len=16,
        window_seqs=40,
        batch_size=100,
        seed=3,
        outlier_ratio=10.0,
        eval_fraction=0.05,
    )
    assert src.batches_per_window == 5
    it = src.batches(2.0)
    first = [next(it) for _ in range(12)]
    assert all(b.shape == (100, 32) for b in first)
    it7 = src.batches(2.0, start_step=7)
    for b in first[7:]:
        assert torch.equal(next(it7), b)
    assert not torch.equal(first[0], first[5])  # a new window after 5 batches


@pytest.fixture(scope="module")
def on_the_fly(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path) -> Path:
    """A run trained on the fly in this process, once for the tests that compare against it."""
    out = tmp_path_factory.mktemp("on-the-fly") / "full"
    code, err = run_cli(*otf_args(tiny_llama_dir, tiny_corpus, out))
    assert code == 0, err
    return out


def test_on_the_fly_train_evaluate_and_resume(
    capsys, monkeypatch, tiny_llama_dir, tiny_corpus, on_the_fly: Path, tmp_path
) -> None:
    full, cut = tmp_path / "full", tmp_path / "cut"
    shutil.copytree(on_the_fly, full)
    assert not any(
        s["split"] == "train"
        for s in __import__("json").loads((full / "activations" / "manifest.json").read_text())["shards"]
    )
    code, err = cli(capsys, monkeypatch, "evaluate", full, "--loss-sequences", "4")
    assert code == 0, err

    real = stream_mod.ActivationStream.batches
    monkeypatch.setattr(stream_mod.ActivationStream, "batches", sigint_at(real, 5))
    code, err = cli(capsys, monkeypatch, *otf_args(tiny_llama_dir, tiny_corpus, cut))
    assert code == 130, err
    assert torch.load(cut / "saes" / "relu-16" / "state.pt", weights_only=True)["step"] == 6
    monkeypatch.setattr(stream_mod.ActivationStream, "batches", real)
    assert cli(capsys, monkeypatch, *otf_args(tiny_llama_dir, tiny_corpus, cut))[0] == 0
    for n in (16, 64):
        a, b = weights(full, n), weights(cut, n)
        for k in a:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("world", [2])
def test_on_the_fly_under_torchrun(tiny_llama_dir, tiny_corpus, on_the_fly: Path, tmp_path, world) -> None:
    one, many = on_the_fly, tmp_path / "many"
    run_torchrun(*otf_args(tiny_llama_dir, tiny_corpus, many), nproc=world)
    assert_same_saes(one, many, ["relu-16", "relu-64"])
