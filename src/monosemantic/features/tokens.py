"""Token text without the tokenizer: each vocabulary entry as raw bytes (stored once in the
database), decoded back to text per token so that a character split over several byte-level
tokens (Chinese, accented letters) still reads correctly."""

from __future__ import annotations

import codecs
import re
from typing import Any

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte <-> printable character map, inverted (character -> byte)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def token_bytes(tokenizer: Any, n_vocab: int = 0) -> list[bytes]:
    """The bytes of every token id: byte-level BPE (GPT-2, Llama 3, SmolLM) through its byte map,
    SentencePiece byte fallback (<0xE4>) as that byte, anything else through ``decode``; ids
    the model has beyond the tokenizer's (padding of the embedding matrix) are empty."""
    n = max(len(tokenizer), max(tokenizer.get_vocab().values()) + 1)
    pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = str(backend.decoder) if backend is not None else ""
    byte_level = "ByteLevel" in decoder
    # WordPiece (BERT) and plain word vocabularies join tokens with spaces when decoding
    spaced = backend is not None and (backend.decoder is None or "WordPiece" in decoder)
    table = _byte_level_table()
    out = []
    for i, piece in enumerate(pieces):
        if piece is None:
            out.append(b"")
        elif byte_level and all(c in table for c in piece):
            out.append(bytes(table[c] for c in piece))
        elif m := _BYTE_FALLBACK.fullmatch(piece):
            out.append(bytes([int(m.group(1), 16)]))
        elif piece.startswith("▁"):  # SentencePiece word boundary
            out.append((" " + piece[1:]).encode())
        elif spaced:
            out.append(piece[2:].encode() if piece.startswith("##") else (" " + piece).encode())
        else:
            out.append(tokenizer.decode([i], clean_up_tokenization_spaces=False).encode())
    return out + [b""] * (n_vocab - n)


def decode_tokens(chunks: list[bytes]) -> list[str]:
    """Per-token text of consecutive tokens: a character completes at the token holding its last
    byte (the earlier ones show nothing); their concatenation is the decoded text."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    out = [dec.decode(c) for c in chunks]
    out[-1:] = [out[-1] + dec.decode(b"", final=True)] if out else []
    return out


def _utf8_length(lead: int) -> int:
    """Bytes in the UTF-8 character that starts with byte ``lead``; 0 when it cannot start one."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead < 0xE0:
        return 2
    if 0xE0 <= lead < 0xF0:
        return 3
    if 0xF0 <= lead < 0xF5:
        return 4
    return 0


def window_text(
    chunks: list[bytes], start: int, end: int, acts: list[float] | None = None
) -> tuple[list[str], list[float]]:
    """Display text and activation of tokens ``start .. end`` of a sequence whose tokens have the
    bytes ``chunks``, at character boundaries.

    A character split over several byte-level tokens shows once, at the token of the window that
    holds its last byte (at the window's last token when it ends after the window), including bytes
    that lie before the window, so that the window never starts or ends with U+FFFD; the tokens
    holding only its earlier bytes show "". The activation shown with a token's text is the
    largest of the window's tokens that hold bytes of it (``acts``: per token of the window; the
    per-token values stay the caller's). Bytes that are not UTF-8 show as U+FFFD, one per byte."""
    acts = list(acts) if acts is not None else [0.0] * (end - start)
    try:  # the common case, ~30x faster: every token of the window holds whole characters only
        return [c.decode("utf-8") for c in chunks[start:end]], acts
    except UnicodeDecodeError:
        pass
    lo, hi = max(0, start - 4), min(len(chunks), end + 4)  # a character has at most 4 bytes
    data = b"".join(chunks[lo:hi])
    owner = [k for k in range(lo, hi) for _ in chunks[k]]  # token of each byte
    texts = [""] * (end - start)
    shown = list(acts)
    p = 0
    while p < len(data):
        n = _utf8_length(data[p])
        char = "\ufffd"
        if n and p + n <= len(data):
            try:
                char = data[p : p + n].decode("utf-8")
            except UnicodeDecodeError:
                n = 1
        else:
            n = 1
        first, last = owner[p], owner[p + n - 1]
        p += n
        if last < start or first >= end:
            continue
        at = min(last, end - 1) - start
        texts[at] += char
        shown[at] = max([shown[at], *acts[max(first, start) - start : at + 1]])
    return texts, shown
