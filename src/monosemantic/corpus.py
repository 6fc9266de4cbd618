"""Text sources → packed token sequences.

A corpus *spec* names where the text comes from: ``"default"`` (the bundled mix, see docs/data.md),
a text file, a folder, a glob, a ``.jsonl`` file, or a Hugging Face dataset (``hf:NAME[:CONFIG]``,
or a bare ``org/name`` that is not a local path). ``load_texts`` turns a spec into a stream of
documents; ``iter_sequences`` tokenizes and packs them into fixed-length sequences. Documents go to
the train or the eval side by a hash of their text, so a streamed corpus splits the same way on
every run and on every machine.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from monosemantic.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_CORPUS = "default"
DEFAULT_PATH = Path(__file__).parent / "data" / "corpus.jsonl.gz"
SPLITS = ("train", "eval", "all")
# A file larger than this is cut into documents at blank lines: the held-out split works per
# document, and one huge document would land wholly on one side.
HUGE_CHARS = 1_000_000
DOC_CHARS = 20_000  # size of the documents a huge file is cut into
TOKENIZE_BATCH = 64
_FILE_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".gz", ".csv", ".html", ".xml")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def load_texts(
    spec: str | None = None, *, text_field: str = "text", hf_split: str = "train"
) -> Iterator[str]:
    """Stream the non-empty documents named by ``spec`` (see the module docstring).

    Problems with the spec (missing path, no match, ``datasets`` not installed) raise
    ``UserError`` here, before the first document is read."""
    if spec is None or spec == DEFAULT_CORPUS:
        if not DEFAULT_PATH.is_file():
            raise UserError(
                f"the bundled corpus {DEFAULT_PATH} is missing: reinstall monosemantic, "
                "or rebuild it with scripts/build_corpus.py"
            )
        return _nonempty(_jsonl_texts(DEFAULT_PATH, "text"))
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return _nonempty(_hub_texts(name, config or None, hf_split, text_field))
    path = Path(spec).expanduser()
    if path.is_file():
        return _nonempty(_file_texts(path, text_field))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        return _nonempty(_files_texts(files, text_field))
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(
                f"corpus glob {spec!r} matches no files: check the pattern (quote it in the shell)"
            )
        return _nonempty(_files_texts(files, text_field))
    if _looks_like_hub_name(spec):
        return _nonempty(_hub_texts(spec, None, hf_split, text_field))
    raise UserError(
        f"corpus {spec!r} not found: give an existing file, folder, glob or .jsonl file, "
        f"{DEFAULT_CORPUS!r}, or a Hugging Face dataset as hf:NAME"
    )


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the eval side; a stable hash of its text, same on every run."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2**64


def iter_sequences(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    *,
    split: str = "train",
    eval_fraction: float = 0.05,
    name: str = "the corpus",
) -> Iterator[list[int]]:
    """Tokenize the documents of ``split`` ("train", "eval" or "all") and pack them into sequences of
    exactly ``seq_len`` tokens, with EOS (else BOS, else nothing) between documents; the trailing
    partial sequence is dropped. Raises ``UserError`` if not even one sequence comes out."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, not {seq_len}")
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
    docs = (t for t in texts if split == "all" or is_heldout(t, eval_fraction) == (split == "eval"))
    buf: list[int] = []
    first, n_tokens, n_yielded = True, 0, 0
    while batch := list(islice(docs, TOKENIZE_BATCH)):
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            if not first and sep is not None:
                buf.append(sep)
            buf.extend(ids)
            n_tokens += len(ids)
            first = False
            n_full = len(buf) // seq_len
            for i in range(n_full):
                yield buf[i * seq_len : (i + 1) * seq_len]
            n_yielded += n_full
            del buf[: n_full * seq_len]
    if n_yielded == 0:
        raise UserError(
            f"{name} is empty or shorter than one sequence of {seq_len} tokens in its {split!r} "
            f"split ({n_tokens} tokens, eval_fraction={eval_fraction}): use more text or a "
            "smaller sequence length"
        )


def take_sequences(
    texts: Iterable[str],
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int,
    n_seqs: int,
    *,
    split: str = "train",
    eval_fraction: float = 0.05,
    skip: int = 0,
    name: str = "the corpus",
) -> torch.Tensor:
    """The packed sequences ``skip .. skip + n_seqs`` as a LongTensor (n, seq_len) with n <= n_seqs;
    n is smaller when the corpus runs out (0 only when ``skip`` > 0: resuming past its end).

    Raises ``UserError`` when the split holds no full sequence at all."""
    seqs = iter_sequences(texts, tokenizer, seq_len, split=split, eval_fraction=eval_fraction, name=name)
    rows = list(islice(seqs, skip, skip + n_seqs))
    if not rows:
        return torch.empty(0, seq_len, dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


def _nonempty(texts: Iterator[str]) -> Iterator[str]:
    return (t for t in texts if t and not t.isspace())


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _looks_like_hub_name(spec: str) -> bool:
    """'org/name' that is not a file path someone mistyped (a known suffix, or a local first folder)."""
    return (
        _HUB_NAME.fullmatch(spec) is not None
        and not spec.lower().endswith(_FILE_SUFFIXES)
        and not Path(spec.split("/")[0]).exists()
    )


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _is_binary(path: Path) -> bool:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return b"\0" in f.read(8192)
    except (OSError, EOFError):  # unreadable or a corrupt .gz
        return True


def _files_texts(files: list[Path], text_field: str) -> Iterator[str]:
    """Every file of a folder or glob; binary files (images, archives, ...) are skipped."""
    for p in files:
        if _is_jsonl(p) or not _is_binary(p):
            yield from _file_texts(p, text_field)


def _file_texts(path: Path, text_field: str) -> Iterator[str]:
    if _is_jsonl(path):
        yield from _jsonl_texts(path, text_field)
        return
    with _open_text(path) as f:
        text = f.read()
    if len(text) <= HUGE_CHARS:
        yield text
        return
    doc: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        doc.append(para)
        size += len(para)
        if size >= DOC_CHARS:
            yield "\n\n".join(doc)
            doc, size = [], 0
    if doc:
        yield "\n\n".join(doc)


def _jsonl_texts(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno} is not valid JSON ({e}): fix or remove that line") from e
            if isinstance(row, str):
                yield row
            elif isinstance(row, dict) and isinstance(row.get(text_field), str):
                yield row[text_field]
            else:
                fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise UserError(
                    f"{path}:{lineno} has no text field {text_field!r} (it has: {fields}): "
                    "pick the field that holds the text"
                )


def _hub_texts(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError as e:
        raise UserError(
            f"corpus {name!r} is a Hugging Face dataset, which needs the datasets package: "
            "pip install datasets (or give a local file)"
        ) from e
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # the hub client raises many types: network, missing repo, bad config
        raise UserError(
            f"could not open Hugging Face dataset {name!r} (config {config}, split {split}): {e}".replace(
                "\n", " "
            )
        ) from e
    return _hub_rows(ds, name, text_field)


def _hub_rows(ds: Iterable[dict[str, Any]], name: str, text_field: str) -> Iterator[str]:
    for row in ds:
        if text_field not in row:
            raise UserError(
                f"dataset {name!r} has no field {text_field!r} (it has: {', '.join(row)}): "
                "pick the field that holds the text"
            )
        yield row[text_field]
