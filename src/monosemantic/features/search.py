"""Concept search: which features fire strongly and specifically on text about a concept.

The evidence is a set of *occurrences* of the query: the query text itself, and every place in
the analysed corpus where it appears (full-text search over the stored sequences, then the exact
token span). Each occurrence is run through model + dictionary; per feature we take its largest
activation over the occurrence's tokens, relative to the feature's maximum in the analysis.

    strength  = mean over occurrences of that relative activation           (0..1)
    hit rate  = fraction of occurrences where the feature fires at all
    expected  = chance that it fires somewhere on a span that long, from its base frequency
    lift      = hit rate / expected
    score     = strength · log2(lift), 0 when lift ≤ 1

so a feature that fires on most tokens (lift ≈ 1) scores nothing however strongly it fires, and a
rare feature scores in proportion to how strongly it fires on the concept. A feature that fired on
fewer than ``MIN_FIRED`` analysed tokens is not ranked: its base rate and its maximum come from a
handful of tokens (often tiny activations of an almost dead feature), so that its lift and strength
would be noise. ``top-context
precision`` (how many of the feature's top contexts contain the query) is reported beside it.

The default ranking (``corpus+contexts``, measured against the other ``RANKINGS`` on 105 concepts
in docs/features.md) leaves the bare query out when the corpus has occurrences, and multiplies the
score by ``PRECISION_FLOOR + (1 - PRECISION_FLOOR) * top-context precision`` when some feature's
top contexts contain the query; ``features.rerank`` then reorders the best by meaning.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from monosemantic.corpus import clean_text, load_texts
from monosemantic.features import db
from monosemantic.features.tokens import decode_tokens
from monosemantic.models import LoadedModel, capture_residual
from monosemantic.sae import SparseAutoencoder

MIN_FIRED = 10
CHARS_BEFORE, CHARS_AFTER = 600, 100
TOKENS_BEFORE, TOKENS_AFTER = 96, 8
"""Context kept around a corpus occurrence: the model sees the passage leading up to the query."""


@dataclass(frozen=True)
class Occurrence:
    tokens: list[int]
    span: tuple[int, int]
    """Token positions [start, end) that hold the query (never position 0)."""
    source: str
    """'query' or 'corpus sequence N'."""


@dataclass(frozen=True)
class Hit:
    feature: int
    score: float
    strength: float
    hit_rate: float
    lift: float
    freq: float
    context_precision: float
    """Fraction of the feature's top contexts whose text contains the query."""
    similarity: float = float("nan")
    """Cosine between the query's and the feature's firing windows' MiniLM embeddings (NaN
    unless ``features.rerank`` reranked the hits)."""


def fts_phrase(query: str) -> str:
    """``query`` as one FTS5 phrase: operators and syntax in it are text; a NUL byte (which FTS5
    takes for the end of the string, and no context contains) is dropped."""
    return '"' + query.replace("\x00", "").replace('"', '""') + '"'


def query_pattern(query: str) -> re.Pattern[str]:
    """The query's words in order, whole words, any non-word characters between them,
    case-insensitive."""
    words = re.findall(r"\w+", query)
    if not words:  # punctuation or operators: match them literally
        return re.compile(re.escape(query.strip()), re.IGNORECASE)
    # whole words ("Paris" must not match "comparison"), except for scripts written without spaces
    edge = lambda w: r"\b" if w.isascii() else ""  # noqa: E731
    body = r"\W+".join(map(re.escape, words))
    return re.compile(edge(words[0][0]) + body + edge(words[-1][-1]), re.IGNORECASE)


def token_spans(texts: list[str], pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Token ranges [start, end) covering each match of ``pattern`` in the concatenated texts."""
    ends = np.cumsum([len(t) for t in texts])
    spans = []
    for m in pattern.finditer("".join(texts)):
        start = int(np.searchsorted(ends, m.start(), side="right"))
        end = int(np.searchsorted(ends, m.end() - 1, side="right")) + 1
        spans.append((start, end))
    return spans


def _head(lm: LoadedModel) -> list[int]:
    """A separator token put before a passage, so that its first token is not the attention sink."""
    tok = lm.tokenizer
    sep = tok.eos_token_id if tok.eos_token_id is not None else tok.bos_token_id
    return [] if sep is None else [sep]


def occurrences(
    con: sqlite3.Connection,
    corpus: int,
    lm: LoadedModel,
    query: str,
    words: list[bytes],
    max_matches: int,
    texts: Iterable[str] = (),
) -> list[Occurrence]:
    """The query text, its occurrences in the analysed sequences (at most one per sequence), then,
    up to ``max_matches`` in all, in the documents of ``texts`` (the corpus the sequences came
    from, which is usually larger than what was analysed; one per document)."""
    head = _head(lm)
    ids = lm.tokenizer(query, add_special_tokens=False)["input_ids"]
    out = [Occurrence(head + ids, (len(head), len(head) + len(ids)), "query")] if ids else []
    pattern = query_pattern(query)
    text_of = lambda toks: decode_tokens([words[t] if t < len(words) else b"" for t in toks])  # noqa: E731
    for seq, _ in db.match_sequences(con, corpus, fts_phrase(query), max_matches):
        toks = db.sequence_tokens(con, corpus, seq).tolist()
        spans = [(max(a, 1), b) for a, b in token_spans(text_of(toks), pattern) if b > 1]
        if spans:
            out.append(Occurrence(toks, spans[0], f"corpus sequence {seq}"))
    for i, doc in enumerate(texts):
        if len(out) > max_matches:
            break
        m = pattern.search(doc)
        if m is None:
            continue
        window = doc[max(0, m.start() - CHARS_BEFORE) : m.end() + CHARS_AFTER]
        toks = lm.tokenizer(window, add_special_tokens=False)["input_ids"]
        spans = token_spans(text_of(toks), pattern)
        if spans:
            a, b = spans[0]
            lo = max(0, a - TOKENS_BEFORE)
            cut = head + toks[lo : b + TOKENS_AFTER]
            out.append(Occurrence(cut, (a - lo + len(head), b - lo + len(head)), f"corpus document {i}"))
    return out


@torch.no_grad()
def span_residuals(
    lm: LoadedModel, layer: int, occs: list[Occurrence], batch: int = 16
) -> list[torch.Tensor]:
    """Each occurrence's residual stream over its span: (span length, d_model) per occurrence.

    A causal model reads ``batch`` occurrences per forward pass, right-padded: no position attends
    to the padding after it. Other models (bidirectional attention) read one at a time."""
    out: list[torch.Tensor] = []
    step = batch if lm.is_causal else 1
    for i in range(0, len(occs), step):
        group = occs[i : i + step]
        ids = torch.zeros(len(group), max(len(o.tokens) for o in group), dtype=torch.long)
        for j, occ in enumerate(group):
            ids[j, : len(occ.tokens)] = torch.tensor(occ.tokens)
        resid = capture_residual(lm, layer, ids).float()
        out.extend(resid[j, occ.span[0] : occ.span[1]] for j, occ in enumerate(group))
    return out


@torch.no_grad()
def span_activations(
    lm: LoadedModel, layer: int, sae: SparseAutoencoder, occs: list[Occurrence], batch: int = 16
) -> torch.Tensor:
    """(n_occurrences, n_features): each feature's largest activation over each occurrence's span."""
    return encode_spans(sae, span_residuals(lm, layer, occs, batch))


@torch.no_grad()
def encode_spans(sae: SparseAutoencoder, resids: list[torch.Tensor]) -> torch.Tensor:
    """(n_occurrences, n_features) from ``span_residuals``."""
    return torch.stack([sae.encode(r.to(sae.W_enc.device))[1].amax(0).cpu() for r in resids])


RANKINGS = ("base", "corpus", "corpus+contexts")
"""``base``: every occurrence weighs the same; ``corpus``: the bare query counts only when the
corpus has no occurrence; ``corpus+contexts``: and the score is multiplied by
``PRECISION_FLOOR + (1 - PRECISION_FLOOR) * top-context precision`` when some feature's top
contexts contain the query (see docs/features.md for what each changed)."""
PRECISION_FLOOR = 0.1


def rank(
    acts: torch.Tensor,
    spans: list[int],
    stats: dict[str, np.ndarray],
    precision: dict[int, float],
    top: int,
    *,
    is_query: list[bool] | None = None,
    method: str = "base",
) -> list[Hit]:
    """Rank features by specificity score; acts (n_occ, n), spans: each occurrence's length in
    tokens, is_query: which occurrences are the bare query text."""
    if method not in RANKINGS:
        raise ValueError(f"unknown ranking {method!r}")
    keep = torch.ones(len(spans), dtype=torch.bool)
    if method != "base" and is_query is not None and not all(is_query):
        keep = ~torch.tensor(is_query, dtype=torch.bool)
    acts, spans = acts[keep], [s for s, k in zip(spans, keep.tolist(), strict=True) if k]
    freq = torch.as_tensor(stats["freq"], dtype=torch.float64)
    max_act = torch.as_tensor(stats["max_act"], dtype=torch.float64).clamp(min=1e-12)
    rel = acts.double() / max_act
    strength = rel.clamp(max=1).mean(0)
    hit_rate = (acts > 0).double().mean(0)
    lengths = torch.tensor(spans, dtype=torch.float64).unsqueeze(1)
    expected = (1 - (1 - freq).pow(lengths)).mean(0).clamp(min=1e-9)
    lift = hit_rate / expected
    score = strength * torch.log2(lift.clamp(min=1))
    score[torch.as_tensor(stats["n_fired"]) < MIN_FIRED] = 0  # no reliable base rate or maximum
    if method == "corpus+contexts" and any(v > 0 for v in precision.values()):
        prec = torch.zeros_like(score)
        for j, v in precision.items():
            prec[j] = v
        score = score * (PRECISION_FLOOR + (1 - PRECISION_FLOOR) * prec)
    best = score.argsort(descending=True)[:top].tolist()
    return [
        Hit(j, float(score[j]), float(strength[j]), float(hit_rate[j]), float(lift[j]), float(freq[j]),
            precision.get(j, 0.0))
        for j in best
        if score[j] > 0
    ]  # fmt: skip


def search(
    con: sqlite3.Connection,
    lm: LoadedModel,
    layer: int,
    sae_name: str,
    sae: SparseAutoencoder,
    query: str,
    *,
    max_matches: int = 32,
    top: int = 10,
    texts: Iterable[str] = (),
    method: str = "corpus+contexts",
) -> tuple[list[Hit], list[Occurrence]]:
    """The ``top`` features for ``query`` (see the module docstring; ``method``: one of
    ``RANKINGS``) and the occurrences used."""
    query, _ = clean_text(query)  # a shell argument may carry undecodable bytes (surrogateescape)
    row = db.analysis(con, sae_name)
    assert row is not None
    words = db.vocab(con)
    occs = occurrences(con, int(row["corpus"]), lm, query, words, max_matches, texts)
    if not occs:
        return [], []
    acts = span_activations(lm, layer, sae, occs)
    n_top = max(1, int(db.loads(row["config"])["top_k"]))
    matches = db.search_contexts(con, sae_name, fts_phrase(query))
    precision = {j: n / n_top for j, n in matches.items()}
    spans = [o.span[1] - o.span[0] for o in occs]
    stats = db.feature_stats(con, sae_name)
    is_query = [o.source == "query" for o in occs]
    hits = rank(acts, spans, stats, precision, top, is_query=is_query, method=method)
    return hits, occs


def analysed_texts(con: sqlite3.Connection, sae: str, harvest_corpus: str) -> Iterator[str]:
    """The documents of the corpus the analysis read (the harvest's corpus for the store), when
    they are local: search scans them for more passages than the analysis stored."""

    row = db.analysis(con, sae)
    spec = json.loads(row["config"])["corpus"] if row is not None else "store"
    spec = harvest_corpus if spec.startswith("store") else spec
    return iter(()) if spec.startswith("hf:") else load_texts(spec)
