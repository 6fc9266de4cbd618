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
