"""Issue 18.6: invalid Unicode in any text the corpus readers accept is replaced, counted, logged once."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pytest

from monosemantic import corpus
from monosemantic.corpus import iter_sequences, load_texts
from tests.helpers import word_tokenizer


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_lone_surrogate_in_jsonl(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "w1 w2 cut inside an emoji \\ud83d"}\n{"text": "w3 \\ud83d\\ude00 fine"}\n')
    texts = list(load_texts(str(path)))
    assert texts == ["w1 w2 cut inside an emoji \ufffd", "w3 \U0001f600 fine"]
    for t in texts:
        t.encode("utf-8")  # strict: no surrogate left
    assert sum(1 for _ in iter_sequences(load_texts(str(path)), word_tokenizer(), 2, split="all")) > 0
    for split in ("train", "eval"):  # the held-out hash used to raise UnicodeEncodeError
        list(corpus.split_document(texts[0] + "\ud83d", 0.5))
        assert split
    warned = _warnings(caplog)
    assert len([w for w in warned if "replaced 1 invalid" in w]) == 2, warned  # once per pass


@pytest.mark.parametrize("name", ["bad.txt", "bad.txt.gz", "folder"])
def test_undecodable_bytes_in_files_and_folders(tmp_path: Path, caplog, name: str) -> None:
    raw = b"w1 w2 " + b"\xff\xfe" + b" w3 caf" + b"\xc3" + b" \xe6\x93\x8d\xe4"
    if name == "folder":
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "a.txt").write_bytes(raw)
        spec = tmp_path / "folder"
    elif name.endswith(".gz"):
        spec = tmp_path / name
        spec.write_bytes(gzip.compress(raw))
    else:
        spec = tmp_path / name
        spec.write_bytes(raw)
    (text,) = load_texts(str(spec))
    assert text == "w1 w2 \ufffd\ufffd w3 caf\ufffd \u64cd\ufffd"
    text.encode("utf-8")
    assert any("replaced 4 invalid characters" in w for w in _warnings(caplog))


def test_hub_rows_and_clean_text() -> None:
    rows = [{"text": "ok \udcff"}, {"text": None}, {"text": "plain"}]
    texts = list(corpus._clean(corpus._hub_rows(rows, "x/y", "text"), "x/y"))
    assert texts == ["ok \ufffd", "plain"]
    assert corpus.clean_text("a\ud800b\udfffc") == ("a\ufffdb\ufffdc", 2)
    assert json.loads('"\\ud83d"') == "\ud83d"  # what scraped jsonl holds
