"""Shared fixtures: tiny randomly initialised transformers saved as real model folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "that",
    "this",
    "paris",
    "einstein",
    "code",
    "sql",
    "select",
    "where",
    "buffer",
    "overflow",
    "shell",
    "python",
    "def",
    "return",
    "import",
    "class",
    "if",
    "else",
    "while",
]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]")


def tiny_model(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    v = 64
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=v, n_positions=64, n_embd=32, n_layer=4, n_head=4))
    if family == "llama":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=v,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=128,  # the default --seq-len (demo)
            )
        )
    if family == "bert":
        return BertModel(
            BertConfig(
                vocab_size=v,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                max_position_embeddings=64,
            )
        )
    raise ValueError(family)


def save_tiny(family: str, path: Path) -> Path:
    tiny_model(family).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text corpus of many short documents in the tiny tokenizer's vocabulary."""
    g = torch.Generator().manual_seed(1)
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    import json

    with open(path, "w") as f:
        for _ in range(400):
            n = int(torch.randint(20, 80, (1,), generator=g))
            words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (n,), generator=g)]
            f.write(json.dumps({"text": " ".join(words)}) + "\n")
    return path


def run_torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc-per-node N -m monosemantic ARGS`, one thread per rank; must succeed."""
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", str(nproc), "-m", "monosemantic", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_saes(a: Path, b: Path, names: list[str], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The saved dictionaries ``names`` of runs a and b hold the same weights (within tolerance)."""
    for name in names:
        wa = load_file(str(a / "saes" / name / "sae.safetensors"))
        wb = load_file(str(b / "saes" / name / "sae.safetensors"))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=f"{name} {k}")


@pytest.fixture
def run(capsys, monkeypatch, tiny_llama_dir, tiny_corpus, tmp_path) -> Path:
    """A run directory holding a harvested store of the tiny Llama (3,000 + 600 activations)."""
    from tests.test_cli import cli, harvest_args

    out = tmp_path / "run"
    assert cli(capsys, monkeypatch, *harvest_args(tiny_llama_dir, tiny_corpus, out))[0] == 0
    return out
