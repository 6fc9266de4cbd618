"""Issue 18.2: a --seq-len beyond the model's positions is a one-line error naming the limit and the
flag, raised before anything is written, so that the corrected rerun needs no --force."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import GPT2Config, OPTConfig

from monosemantic.models import max_positions
from tests.helpers import cli, harvest_args, one_line_error, save_tiny


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return save_tiny("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))  # n_positions 64


def _with_seq_len(args: list[str], n: str) -> list[str]:
    args = list(args)
    args[args.index("--seq-len") + 1] = n
    return args


def test_harvest_refuses_then_reruns_without_force(capsys, monkeypatch, tiny_gpt2_dir, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    args = harvest_args(tiny_gpt2_dir, tiny_corpus, out)
    one_line_error(*cli(capsys, monkeypatch, *_with_seq_len(args, "128")), "64 positions): pass --seq-len 64")
    assert not (out / "run.toml").exists()
    code, err = cli(capsys, monkeypatch, *_with_seq_len(args, "64"))  # the limit itself is fine
    assert code == 0, err


def test_train_on_the_fly_refuses_before_writing(capsys, monkeypatch, tiny_gpt2_dir, tiny_corpus, tmp_path):
    out = tmp_path / "fly"
    args = ["train", "--out", str(out), "--model", str(tiny_gpt2_dir), "--corpus", str(tiny_corpus)]
    args += ["--layer", "2", "--sizes", "16", "--seq-len", "128", "--tokens", "2000", "--eval-tokens", "500"]
    one_line_error(*cli(capsys, monkeypatch, *args), "--seq-len 64 or less")
    assert not (out / "run.toml").exists()


def test_a_failed_start_binds_nothing(capsys, monkeypatch, tiny_llama_dir, tmp_path):
    """A harvest that fails on its input after recording run.toml (an empty corpus) leaves nothing
    that a corrected rerun must --force away."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "run"
    code, _ = cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, empty, out))
    assert code == 2
    words = tmp_path / "words.txt"
    words.write_text(" ".join(["the code of paris"] * 400))
    code, err = cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, words, out, "--eval-fraction", "0.5"))
    assert code == 0, err


def test_every_name_of_the_context_limit() -> None:
    assert max_positions(GPT2Config(n_positions=64)) == 64
    assert max_positions(OPTConfig(max_position_embeddings=96)) == 96
    from transformers import RobertaConfig

    assert max_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512
