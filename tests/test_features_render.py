"""Issue 18.10: contexts render at character boundaries; a character split over byte-level tokens
shows whole (never U+FFFD), with the largest activation of its tokens."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from monosemantic.features.db import Context
from monosemantic.features.tokens import token_bytes, window_text

TEXTS = {
    "cjk": "操作系统的内核管理内存",
    "arabic": "مرحبا بالعالم، كيف حالك",
    "emoji": "ok 😀👍🏽 family 👨‍👩‍👧 done",
    "combining": "cafe\u0301 nai\u0308ve re\u0301sume\u0301",
}


@pytest.fixture(scope="module")
def byte_bpe() -> PreTrainedTokenizerFast:
    """A byte-level BPE (as GPT-2, Llama 3, SmolLM) with few merges: non-Latin characters split."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cafe system ok done family"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok)


@pytest.mark.parametrize("name", list(TEXTS))
def test_every_window_renders_whole_characters(byte_bpe, name: str) -> None:
    ids = byte_bpe(TEXTS[name], add_special_tokens=False)["input_ids"]
    chunks = [token_bytes(byte_bpe)[t] for t in ids]
    assert any(b"".join(chunks[:i]).decode("utf-8", "replace").endswith("\ufffd") for i in range(len(ids)))
    full = byte_bpe.decode(ids)
    assert "".join(window_text(chunks, 0, len(ids))[0]) == full == TEXTS[name]
    for start in range(len(ids)):
        for end in range(start + 1, len(ids) + 1):
            text = "".join(window_text(chunks, start, end)[0])
            assert "\ufffd" not in text and text in full
            # the window's text is the decode of its span, widened to the characters it touches
            lo = max((s for s in range(start + 1) if _starts_char(chunks, s)), default=0)
            hi = min((e for e in range(end, len(ids) + 1) if _starts_char(chunks, e)), default=len(ids))
            assert text == byte_bpe.decode(ids[lo:hi])


def _starts_char(chunks: list[bytes], i: int) -> bool:
    """Whether token i begins on a character boundary (or is the end of the sequence)."""
    return i == len(chunks) or not chunks[i] or (chunks[i][0] & 0xC0) != 0x80


def test_a_split_character_shows_at_the_max_of_its_tokens() -> None:
    chunks = [b"a", "操".encode()[:2], "操".encode()[2:] + "作".encode()[:1], "作".encode()[1:]]
    texts, shown = window_text(chunks, 0, 4, [0.0, 0.9, 0.2, 0.1])
    assert texts == ["a", "", "操", "作"] and shown == [0.0, 0.9, 0.9, 0.2]
    ctx = Context("top", 0, None, 0.9, 0, 10, 11, texts, [0.0, 0.9, 0.2, 0.1], shown)
    assert ctx.spans() == [("a", 0.0, [10]), ("操", 0.9, [11, 12]), ("作", 0.2, [13])]
    # the window cut after the first piece of 操 still shows it whole, with that piece's activation
    assert window_text(chunks, 0, 2, [0.0, 0.9]) == (["a", "操"], [0.0, 0.9])
    assert window_text(chunks, 2, 4, [0.2, 0.1]) == (["操", "作"], [0.2, 0.2])
