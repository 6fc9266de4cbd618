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
import logging
import math
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
# The held-out split works per document, and one long document (a book as one .txt file with no
# blank lines, one huge jsonl row) would land wholly on one side: documents longer than this are
# cut into pieces for the assignment, whatever their line structure.
PIECE_CHARS = 20_000
MIN_PIECE_CHARS = 2_000  # a long document is cut into at least 1/eval_fraction pieces, none shorter
_SURROGATE = re.compile("[\ud800-\udfff]")
TOKENIZE_BATCH = 64
_FILE_SUFFIXES = (".txt", ".md", ".rst", ".py", ".json", ".jsonl", ".gz", ".csv", ".html", ".xml")
log = logging.getLogger(__name__)
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
        return _clean(_jsonl_texts(DEFAULT_PATH, "text"), "the bundled corpus")
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition(":")
        return _clean(_hub_texts(name, config or None, hf_split, text_field), spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return _clean(_file_texts(path, text_field), spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _hidden(p.relative_to(path)))
        return _clean(_files_texts(files, text_field), spec)
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(
                f"corpus glob {spec!r} matches no files: check the pattern (quote it in the shell)"
            )
        return _clean(_files_texts(files, text_field), spec)
    if _looks_like_hub_name(spec):
        return _clean(_hub_texts(spec, None, hf_split, text_field), spec)
    raise UserError(
        f"corpus {spec!r} not found: give an existing file, folder, glob or .jsonl file, "
        f"{DEFAULT_CORPUS!r}, or a Hugging Face dataset as hf:NAME"
    )


def _hash01(text: str) -> float:
    # surrogatepass: a text that did not come through load_texts may hold lone surrogates
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(text: str, fraction: float) -> bool:
    """Whether a document belongs to the eval side; a stable hash of its text, same on every run."""
    return _hash01(text) < fraction


def split_document(text: str, fraction: float) -> Iterator[tuple[str, bool]]:
    """(piece, held out) for the pieces of one document, in order.

    A document up to ``PIECE_CHARS`` long (and any shorter than two ``MIN_PIECE_CHARS`` pieces) is
    one piece, held out by the hash of its text. A longer one is cut, at line breaks where it has
    them, else at spaces, into at least ``1 / fraction`` pieces (none under ``MIN_PIECE_CHARS``,
    none over ``PIECE_CHARS``), held out systematically from a phase its hash sets: piece j goes
    to eval when floor((j + 1) f + u) > floor(j f + u), so that a document of n pieces gives the
    eval side floor(n f + u) of them, at least one once n f >= 1."""
    spread = math.ceil(1 / fraction) if fraction > 0 else 1
    n = max(math.ceil(len(text) / PIECE_CHARS), min(spread, len(text) // MIN_PIECE_CHARS))
    if n <= 1:
        yield text, is_heldout(text, fraction)
        return
    u = _hash01(text)
    for j, piece in enumerate(_cut(text, n)):
        yield piece, math.floor((j + 1) * fraction + u) > math.floor(j * fraction + u)


def _cut(text: str, n: int) -> Iterator[str]:
    """``text`` in ``n`` consecutive pieces of about equal length, cut after a newline when one is
    in the second half of a piece, else after a space, else anywhere."""
    size = len(text) / n
    start = 0
    for k in range(1, n):
        end = round(k * size)
        lo = max(start + 1, round(end - size / 2))
        cut = text.rfind("\n", lo, end) + 1 or text.rfind(" ", lo, end) + 1 or end
        yield text[start:cut]
        start = cut
    yield text[start:]


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
    seen = [0, 0]  # pieces of the corpus, pieces of this split

    def pieces() -> Iterator[str]:
        for text in texts:
            if split == "all":
                seen[0] += 1
                seen[1] += 1
                yield text
                continue
            for piece, held in split_document(text, eval_fraction):
                seen[0] += 1
                if held == (split == "eval"):
                    seen[1] += 1
                    yield piece

    docs = pieces()
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
        held = "" if split == "all" else f" of {seen[0]} documents/pieces, --eval-fraction {eval_fraction}"
        raise UserError(
            f"{name} is empty or shorter than one sequence of {seq_len} tokens in its {split!r} "
            f"split ({n_tokens} tokens from {seen[1]}{held}): use more text or a smaller --seq-len"
            + ("" if split == "all" else ", or a larger --eval-fraction if the 'eval' split is the short one")
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


def clean_text(text: str) -> tuple[str, int]:
    """``text`` with every lone surrogate (an undecodable byte read with surrogateescape, or a
    ``\\ud83d`` escape cut from its pair in JSON) replaced by U+FFFD, and how many were replaced."""
    if _SURROGATE.search(text) is None:
        return text, 0
    return _SURROGATE.subn("\ufffd", text)


def _clean(texts: Iterable[Any], name: str) -> Iterator[str]:
    """The non-empty documents, invalid Unicode replaced by U+FFFD; the count is logged once, when
    the stream ends or is dropped."""
    replaced = docs = 0
    try:
        for t in texts:
            if not isinstance(t, str) or not t or t.isspace():
                continue
            t, n = clean_text(t)
            if n:
                replaced, docs = replaced + n, docs + 1
            yield t
    finally:
        if replaced:
            log.warning(
                "%s: replaced %d invalid characters (undecodable bytes or lone surrogates) in %d "
                "documents with U+FFFD",
                name,
                replaced,
                docs,
            )


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
    # surrogateescape keeps an undecodable byte as a lone surrogate, which _clean counts and replaces
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


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
        yield f.read()  # a long file is cut into pieces for the held-out split by split_document


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
