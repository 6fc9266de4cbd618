"""Issue 18.4: a residual beyond float16's range at one token must not poison a shard when it is a
masked outlier, and is named with its sequence at harvest when it is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from monosemantic.activations import finite_rows
from monosemantic.errors import UserError
from tests.helpers import TRAIN, cli, harvest_args, one_line_error, tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def hot_llama(tmp_path_factory) -> Path:
    """The tiny Llama with one embedding entry of the token 'paris' at 1e5 (float16 ends at 65504)."""
    path = tmp_path_factory.mktemp("hot-llama")
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[tiny_tokenizer().get_vocab()["paris"], 0] = 1e5
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def test_masked_overflow_is_stored_as_zeros_and_trains(capsys, monkeypatch, hot_llama, tiny_corpus, tmp_path):
    out = tmp_path / "run"
    code, err = cli(capsys, monkeypatch, *harvest_args(hot_llama, tiny_corpus, out))
    assert code == 0, err
    manifest = json.loads((out / "activations" / "manifest.json").read_text())
    assert sum(s["n_tokens"] - s["n_kept"] for s in manifest["shards"]) > 0  # the hot tokens are masked
    code, err = cli(capsys, monkeypatch, "train", "--out", out, *TRAIN, "--epochs", "0.5")
    assert code == 0, err  # was: "91 activations are NaN/Inf"


def test_unmasked_overflow_is_named_at_harvest(capsys, monkeypatch, hot_llama, tiny_corpus, tmp_path):
    args = harvest_args(hot_llama, tiny_corpus, tmp_path / "run", "--outlier-ratio", "1e9")
    one_line_error(*cli(capsys, monkeypatch, *args), "first at sequence")
    args = harvest_args(hot_llama, tiny_corpus, tmp_path / "run32", "--outlier-ratio", "1e9")
    assert cli(capsys, monkeypatch, *args, "--store-dtype", "float32")[0] == 0  # as the message says


def test_finite_rows_names_the_sequence_and_zeros_masked_rows() -> None:
    acts = torch.ones(6, 4, dtype=torch.float16)
    acts[4, 1] = float("inf")
    keep = torch.tensor([True, True, True, True, False, True])
    fixed = finite_rows(acts, keep, "here")
    assert torch.equal(fixed[4], torch.zeros(4, dtype=torch.float16)) and torch.equal(fixed[:4], acts[:4])
    keep[4] = True
    with pytest.raises(UserError, match=r"here: 1 activations .* sequence 6, position 2"):
        finite_rows(acts, keep, "here", first_seq=5, per_seq=3)
