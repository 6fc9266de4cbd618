"""Corpus loading (bundled, files, folders, globs, jsonl, hub names) and token packing."""

from __future__ import annotations

import gzip
import json
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch

from monosemantic import corpus
from monosemantic.corpus import (
    DEFAULT_CORPUS,
    is_heldout,
    iter_sequences,
    load_texts,
    take_sequences,
)
from monosemantic.errors import UserError
from tests.helpers import word_tokenizer

SOURCES = {
    *("wordnet", "gcide", "foldoc", "jargon", "devil", "factbook", "cwe", "python-src", "python-docs"),
    *("udhr", "debian-handbook", "bible", "austen", "cfi"),
}


def doc(*ids: int) -> str:
    return " ".join(f"w{i}" for i in ids)


def test_bundled_corpus_is_a_varied_mix() -> None:
    with gzip.open(corpus.DEFAULT_PATH, "rt", encoding="utf-8") as f:
        head = [json.loads(line) for line in islice(f, 500)]
    assert {r["source"] for r in head} == SOURCES
    langs = {r["lang"] for r in head}
    assert "en" in langs and len(langs) >= 10
    assert all(100 <= len(r["text"]) <= 4000 for r in head)
    texts = list(islice(load_texts(), 500))
    assert texts == [r["text"] for r in head]
    assert list(islice(load_texts(DEFAULT_CORPUS), 3)) == texts[:3]


def test_file_folder_and_glob(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "a.txt").write_text("alpha text")
    (tmp_path / "sub" / "b.md").write_text("# beta\n\nmarkdown")
    (tmp_path / "c.py").write_text("print('gamma')\n")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / ".git" / "HEAD").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\0\0binary")
    with gzip.open(tmp_path / "d.txt.gz", "wt") as f:
        f.write("delta compressed")

    assert list(load_texts(str(tmp_path / "a.txt"))) == ["alpha text"]
    assert list(load_texts(str(tmp_path / "d.txt.gz"))) == ["delta compressed"]
    assert list(load_texts(str(tmp_path))) == [
        "alpha text",
        "print('gamma')\n",
        "delta compressed",
        "# beta\n\nmarkdown",
    ]
    assert list(load_texts(str(tmp_path / "**" / "*.md"))) == ["# beta\n\nmarkdown"]
    assert list(load_texts(str(tmp_path / "*.t*"))) == ["alpha text", "delta compressed"]


def test_jsonl_and_jsonl_gz(tmp_path: Path) -> None:
    rows = [{"body": "one", "id": 1}, {"body": ""}, {"body": "two"}]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for name in ("x.jsonl", "x.jsonl.gz"):
        assert list(load_texts(str(tmp_path / name), text_field="body")) == ["one", "two"]
    with pytest.raises(UserError, match="no text field 'text'"):
        list(load_texts(str(tmp_path / "x.jsonl")))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        list(load_texts(str(tmp_path / "bad.jsonl")))


def test_a_long_file_without_blank_lines_gives_both_splits(tmp_path: Path) -> None:
    """Issue 18.5: 1.8 MB of prose with single newlines only was one document, all on one side."""
    lines = [doc(*(((i * 7 + j) % 100) for j in range(12))) for i in range(38_000)]
    (tmp_path / "big.txt").write_text("\n".join(lines))
    assert (tmp_path / "big.txt").stat().st_size > 1_500_000
    tok = word_tokenizer()
    n_eval = sum(1 for _ in iter_sequences(load_texts(str(tmp_path / "big.txt")), tok, 128, split="eval"))
    n_train = sum(1 for _ in iter_sequences(load_texts(str(tmp_path / "big.txt")), tok, 128, split="train"))
    assert n_eval > 0 and n_train > 0
    assert 0.03 < n_eval / (n_eval + n_train) < 0.08  # --eval-fraction 0.05


@pytest.mark.parametrize("sep", ["\n", " ", ""])
def test_a_long_document_is_cut_into_pieces_that_rebuild_it(sep: str) -> None:
    text = sep.join(doc(i % 100) for i in range(15_000))  # no line breaks at all when sep is " "
    pieces = list(corpus.split_document(text, 0.05))
    assert "".join(p for p, _ in pieces) == text
    assert len(pieces) >= 20 and max(len(p) for p, _ in pieces) <= corpus.PIECE_CHARS
    held = [h for _, h in pieces]
    assert any(held) and not all(held)
    assert pieces == list(corpus.split_document(text, 0.05))  # the same on every run
    if sep:
        assert all(p.endswith(sep) for p, _ in pieces[:-1])  # cut at a boundary


def test_two_sequences_of_one_document_give_both_splits_or_say_why() -> None:
    tok = word_tokenizer()
    text = doc(*(i % 100 for i in range(4_000)))  # ~20k characters, 4,000 tokens: 31 sequences
    for split in ("train", "eval"):
        assert list(iter_sequences([text], tok, 128, split=split, eval_fraction=0.05))
    two = doc(*(i % 100 for i in range(257)))  # two sequences' worth: 5% of it is no sequence
    with pytest.raises(UserError, match="larger --eval-fraction"):
        list(iter_sequences([two], tok, 128, split="eval", eval_fraction=0.05))


def test_missing_paths_raise_user_errors(tmp_path: Path) -> None:
    for spec in (str(tmp_path / "nope.txt"), "data/missing.txt", "no-such-file", str(tmp_path / "*.none")):
        with pytest.raises(UserError):
            load_texts(spec)


@pytest.mark.parametrize("spec", ["hf:someorg/somedata", "hf:someorg/somedata:config", "someorg/somedata"])
def test_hub_name_without_datasets(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(UserError, match="pip install datasets"):
        load_texts(spec)


def test_packing_exact_lengths_order_and_separators() -> None:
    docs = [doc(1, 2, 3), doc(4, 5), doc(6, 7, 8, 9, 10, 11, 12), doc(13)]
    seqs = list(iter_sequences(docs, word_tokenizer(), 4, split="all"))
    assert all(len(s) == 4 for s in seqs)
    stream = [1, 2, 3, 101, 4, 5, 101, 6, 7, 8, 9, 10, 11, 12, 101, 13]
    assert sum(seqs, []) == stream[: len(stream) // 4 * 4]

    assert (
        sum(iter_sequences(docs, word_tokenizer(eos=False, bos=True), 5, split="all"), [])
        == [1, 2, 3, 102, 4, 5, 102, 6, 7, 8, 9, 10, 11, 12, 102, 13][:15]
    )
    assert sum(iter_sequences(docs, word_tokenizer(eos=False), 13, split="all"), []) == list(range(1, 14))


def test_take_sequences_resumes_where_it_stopped() -> None:
    docs = [doc(*range(i % 7, i % 7 + 5)) for i in range(200)]
    tok = word_tokenizer()
    whole = take_sequences(docs, tok, 8, 10, split="all")
    assert whole.dtype == torch.long and whole.shape == (10, 8)
    assert torch.equal(take_sequences(docs, tok, 8, 4, split="all", skip=6), whole[6:])
    n = sum(1 for _ in iter_sequences(docs, tok, 8, split="all"))
    assert n == (200 * 6 - 1) // 8
    assert take_sequences(docs, tok, 8, 1000, split="all").shape == (n, 8)
    assert take_sequences(docs, tok, 8, 5, split="all", skip=n).shape == (0, 8)


def test_heldout_split_is_stable_disjoint_and_sized() -> None:
    docs = [doc(i % 100, i // 100) + f" #{i}" for i in range(4000)]
    held = [is_heldout(d, 0.2) for d in docs]
    assert held == [is_heldout(d, 0.2) for d in docs]
    assert 0.17 < sum(held) / len(docs) < 0.23
    assert not any(is_heldout(d, 0.0) for d in docs) and all(is_heldout(d, 1.0) for d in docs)

    tok = word_tokenizer(eos=False)
    one = [doc(i % 100) for i in range(300)]  # one token per document: sequences show which went where
    train = {t for s in iter_sequences(one, tok, 1, split="train", eval_fraction=0.3) for t in s}
    evals = {t for s in iter_sequences(one, tok, 1, split="eval", eval_fraction=0.3) for t in s}
    assert train.isdisjoint(evals) and train | evals == set(range(100))
    assert evals == {i for i in range(100) if is_heldout(doc(i), 0.3)}


def test_empty_or_short_corpus_is_a_user_error() -> None:
    tok = word_tokenizer()
    with pytest.raises(UserError, match="empty or shorter than one sequence of 8 tokens"):
        take_sequences([], tok, 8, 4)
    with pytest.raises(UserError, match="shorter than one sequence"):
        take_sequences([doc(1, 2, 3)], tok, 8, 4, split="all")
    with pytest.raises(UserError, match="'eval'"):
        list(iter_sequences([doc(1, 2, 3)] * 50, tok, 4, split="eval", eval_fraction=0.0))
    with pytest.raises(ValueError):
        list(iter_sequences([doc(1)], tok, 4, split="test"))
