"""Shared fixtures: a tiny randomly initialised Llama saved as a real model folder, a corpus in its
vocabulary, and a run directory harvested from them (once per session, copied for each test)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import harvest_args, run_cli, save_tiny, write_tiny_corpus


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # The test matrices are tiny: a second OpenMP thread only adds synchronisation, and when the
    # cores are shared with other jobs its spin-waits made each training step ~100x slower. Set
    # before every test: a library may have changed it during the one before.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text corpus of many short documents in the tiny tokenizer's vocabulary."""
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


@pytest.fixture(scope="session")
def harvested(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path) -> Path:
    """The tiny Llama's store harvested through the CLI, once per session; tests use copies (``run``)."""
    out = tmp_path_factory.mktemp("harvested") / "run"
    code, err = run_cli(*harvest_args(tiny_llama_dir, tiny_corpus, out))
    assert code == 0, err
    return out


@pytest.fixture
def run(harvested: Path, tmp_path: Path) -> Path:
    """A run directory of its own holding a harvested store of the tiny Llama (3,000 + 600 activations)."""
    return shutil.copytree(harvested, tmp_path / "run")
