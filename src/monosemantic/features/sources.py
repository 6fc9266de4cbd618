"""Where the analysed activations come from: the run's activation store (no model forward), or a
corpus run through the model. Both yield the same batches, deterministically, so a resumed
analysis skips exactly the batches it has done."""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import islice
from typing import NamedTuple

import torch
from torch import Tensor

from monosemantic.activations import ActivationStore, inlier_mask
from monosemantic.corpus import iter_sequences, load_texts
from monosemantic.models import LoadedModel, capture_residual


class Batch(NamedTuple):
    first: int
    """Index of the batch's first sequence in the source."""
    tokens: Tensor  # (B, T) long
    acts: Tensor  # (B, T, d) float32, zero where not valid
    valid: Tensor  # (B, T) bool: False at position 0 (the attention sink) and at outliers


def store_sequences(store: ActivationStore, n_tokens: int) -> int:
    """How many stored sequences (train shards, then held-out ones) cover ``n_tokens`` (0 = all)."""
    seq_len = int(store.manifest["seq_len"])
    have = sum(s["n_seqs"] for s in store.manifest["shards"])
    return have if n_tokens <= 0 else min(have, math.ceil(n_tokens / (seq_len - 1)))


def store_batches(store: ActivationStore, n_seqs: int, batch_size: int, skip: int) -> Iterator[Batch]:
    """The first ``n_seqs`` stored sequences in manifest order, ``batch_size`` at a time (batches
    never straddle shards); batches starting before sequence ``skip`` are not loaded."""
    first = 0
    for shard in store.manifest["shards"]:
        if first >= n_seqs:
            return
        n = min(shard["n_seqs"], n_seqs - first)
        if first + n <= skip:
            first += n
            continue
        acts, tokens, keep = store.load(shard)
        seq_len = tokens.shape[1]
        acts = acts.view(shard["n_seqs"], seq_len - 1, -1)
        keep = keep.view(shard["n_seqs"], seq_len - 1)
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            if first + i < skip:
                continue
            full = torch.zeros(j - i, seq_len, acts.shape[-1])
            full[:, 1:] = acts[i:j]
            valid = torch.zeros(j - i, seq_len, dtype=torch.bool)
            valid[:, 1:] = keep[i:j]
            yield Batch(first + i, tokens[i:j], full * valid.unsqueeze(-1), valid)
        first += n


def model_batches(
    lm: LoadedModel,
    layer: int,
    corpus: str,
    seq_len: int,
    n_seqs: int,
    batch_size: int,
    skip: int,
    outlier_ratio: float,
) -> Iterator[Batch]:
    """The corpus's first ``n_seqs`` packed sequences (every document, no held-out split) through
    the model up to ``layer``; batches before sequence ``skip`` are tokenized but not run."""
    seqs = islice(iter_sequences(load_texts(corpus), lm.tokenizer, seq_len, split="all", name=corpus), n_seqs)
    first = 0
    while rows := list(islice(seqs, batch_size)):
        if first >= skip:
            tokens = torch.tensor(rows, dtype=torch.long)
            resid = capture_residual(lm, layer, tokens).float().cpu()  # (B, T, d)
            valid = torch.zeros(tokens.shape, dtype=torch.bool)
            valid[:, 1:] = inlier_mask(resid[:, 1:], outlier_ratio)
            yield Batch(first, tokens, resid * valid.unsqueeze(-1), valid)
        first += len(rows)
