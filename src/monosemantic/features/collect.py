"""Streaming per-feature statistics in bounded memory: pure tensor math, no I/O.

``FeatureCollector.update`` takes the feature activations of a batch of sequences (B, T, n) and
keeps, per feature:

- the number of tokens it fires on, the sum and the maximum of its activations, and a histogram
  of its nonzero activations over fixed log-spaced bins;
- the ``top_k`` sequences where it fires most strongly (by the sequence's largest activation),
  each with the window of ``width`` tokens around that peak and the activation on every token;
- a uniform random sample of ``n_samples`` of the sequences it fires on (same windows), from
  which ``finalize`` cuts ``n_bands`` quantile bands of equal count, as Delphi does; uniform
  sampling makes each band a uniform sample of that quantile of the feature's activations;
- a uniform random sample of ``n_random`` windows where it does not fire at all.

Both samples are "keep the n entries with the largest key", the top-k with the activation as key
and the samples with a random key, so one vectorised merge (``_merge``) serves all three. Only
the firing entries of a batch are looked at after one ``nonzero`` pass, and windows are cut only
for the entries that enter a buffer. The keys come from a generator seeded by (seed, batch
index), so a run resumed from ``state_dict`` ends with exactly the result of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

HIST_EDGES = torch.logspace(-4, 4, 65)
"""Histogram bin edges (activations outside go to the first/last bin): 64 log-spaced bins."""


@dataclass(frozen=True)
class CollectorConfig:
    top_k: int = 20
    n_samples: int = 40
    n_bands: int = 10
    n_random: int = 20
    before: int = 24
    """Tokens shown before the peak token (the window is ``before + 1 + after`` tokens)."""
    after: int = 7
    seed: int = 0

    @property
    def width(self) -> int:
        return self.before + 1 + self.after


class Buffer(NamedTuple):
    """``size`` entries per feature, each column kept sorted by nothing in particular."""

    keys: Tensor  # (size, n) float; -inf marks an empty slot
    act: Tensor  # (size, n) the sequence's peak activation
    seq: Tensor  # (size, n) long
    start: Tensor  # (size, n) long: first token of the window
    peak: Tensor  # (size, n) long
    window: Tensor  # (size, n, width) float16: activation on each token of the window


def _empty(size: int, n: int, width: int) -> Buffer:
    long = torch.zeros(size, n, dtype=torch.long)
    return Buffer(
        torch.full((size, n), -torch.inf), torch.zeros(size, n), long, long.clone(), long.clone(),
        torch.zeros(size, n, width, dtype=torch.float16),
    )  # fmt: skip


WindowsOf = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(sequence index in the batch, feature, first token) of m entries -> their windows (m, width)."""


def _merge(
    buf: Buffer, keys: Tensor, act: Tensor, seq: Tensor, start: Tensor, peak: Tensor, windows_of: WindowsOf
) -> Buffer:
    """Keep, per feature, the ``size`` entries with the largest keys among the buffer and the new
    candidates: one per sequence, keys/act/start/peak (B, n), seq (B,). Windows are cut only for
    the candidates that enter (few, once the buffers have filled)."""
    size, n = buf.keys.shape
    if not bool((keys.amax(0) > buf.keys.amin(0)).any()):
        return buf  # nothing enters
    b, width = keys.shape[0], buf.window.shape[-1]
    all_keys = torch.cat([buf.keys, keys])
    best = all_keys.topk(size, dim=0).indices  # (size, n)
    new_keys = all_keys.gather(0, best)
    take = lambda old, new: torch.cat([old, new]).gather(0, best)  # noqa: E731
    kept = best.clamp(max=size - 1).unsqueeze(-1).expand(size, n, width)
    window = buf.window.gather(0, kept)
    fresh = (best >= size) & new_keys.isfinite()  # empty slots (-inf) need no window
    rows, cols = fresh.nonzero(as_tuple=True)
    entering = best[rows, cols] - size
    window[rows, cols] = windows_of(entering, cols, start[entering, cols])
    return Buffer(
        new_keys,
        take(buf.act, act),
        take(buf.seq, seq.unsqueeze(1).expand(b, n)),
        take(buf.start, start),
        take(buf.peak, peak),
        window,
    )


class FeatureCollector:
    def __init__(self, n_features: int, cfg: CollectorConfig) -> None:
        self.n, self.cfg = n_features, cfg
        self.n_tokens = 0
        self.batches = 0
        self.count = torch.zeros(n_features, dtype=torch.long)
        self.total = torch.zeros(n_features, dtype=torch.float64)
        self.max = torch.zeros(n_features)
        self.hist = torch.zeros(n_features, len(HIST_EDGES) - 1, dtype=torch.long)
        self.top = _empty(cfg.top_k, n_features, cfg.width)
        self.samples = _empty(cfg.n_samples, n_features, cfg.width)
        self.random = _empty(cfg.n_random, n_features, cfg.width)
        self.updating = False
        """True while ``update`` runs: a state saved then would count a batch half."""

    @torch.no_grad()
    def update(self, feats: Tensor, seq_ids: Tensor, valid: Tensor) -> None:
        """feats (B, T, n) ≥ 0, seq_ids (B,) long, valid (B, T) bool (False: not analysed, e.g.
        position 0 or an outlier; its activations are ignored).

        Works on the firing entries only (a few per token out of n), so its cost follows the
        dictionary's L0, not its size: the dense (B, T, n) tensor is read once, by ``nonzero``."""
        self.updating = True
        cfg = self.cfg
        bsz, t, n = feats.shape
        if t < cfg.width:
            raise ValueError(f"sequences of {t} tokens are shorter than the context window {cfg.width}")
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.batches)
        b_idx, t_idx, cols = (feats > 0).nonzero(as_tuple=True)
        keep = valid[b_idx, t_idx]
        b_idx, t_idx, cols = b_idx[keep], t_idx[keep], cols[keep]
        vals = feats[b_idx, t_idx, cols].float()
        nb = len(HIST_EDGES) - 1
        bins = (torch.bucketize(vals, HIST_EDGES) - 1).clamp(0, nb - 1)
        hist = torch.bincount(cols * nb + bins, minlength=n * nb).view(n, nb)
        # per (sequence, feature): the peak activation and the first token that reaches it
        pair = b_idx * n + cols
        peak_act = torch.zeros(bsz * n).scatter_reduce(0, pair, vals, "amax")
        at_peak = vals == peak_act[pair]
        peak = torch.full((bsz * n,), t, dtype=torch.long)
        peak = peak.scatter_reduce(0, pair[at_peak], t_idx[at_peak], "amin").view(bsz, n)
        peak_act = peak_act.view(bsz, n)
        fires = peak_act > 0
        peak = peak.masked_fill(~fires, 0)
        start = (peak - cfg.before).clamp(0, t - cfg.width)
        offsets = torch.arange(cfg.width)

        def windows_of(b: Tensor, j: Tensor, first: Tensor) -> Tensor:
            pos = first.unsqueeze(1) + offsets  # (m, width)
            b2 = b.unsqueeze(1).expand_as(pos)
            return (feats[b2, pos, j.unsqueeze(1)].float() * valid[b2, pos]).half()

        top = _merge(
            self.top, peak_act.masked_fill(~fires, -torch.inf), peak_act, seq_ids, start, peak, windows_of
        )
        u = torch.rand(bsz, n, generator=g)
        samples = _merge(
            self.samples, u.masked_fill(~fires, -torch.inf), peak_act, seq_ids, start, peak, windows_of
        )
        # one random window per sequence; a feature's negative if it is zero all along the window
        r_start = torch.randint(0, t - cfg.width + 1, (bsz,), generator=g)
        in_window = (t_idx >= r_start[b_idx]) & (t_idx < r_start[b_idx] + cfg.width)
        loud = torch.zeros(bsz * n, dtype=torch.bool)
        loud[pair[in_window]] = True
        pos = r_start.unsqueeze(1) + offsets  # (B, width)
        quiet = ~loud.view(bsz, n) & valid.gather(1, pos).any(1, keepdim=True)
        u = torch.rand(bsz, n, generator=g)
        r_start_n = r_start.unsqueeze(1).expand(bsz, n)
        random = _merge(
            self.random, u.masked_fill(~quiet, -torch.inf), torch.zeros(bsz, n), seq_ids, r_start_n,
            r_start_n + cfg.before, windows_of,
        )  # fmt: skip
        self.n_tokens += int(valid.sum())
        self.count += torch.bincount(cols, minlength=n)
        self.total += torch.bincount(cols, weights=vals.double(), minlength=n)
        self.max = torch.maximum(self.max, peak_act.amax(0))
        self.hist += hist
        self.top, self.samples, self.random = top, samples, random
        self.batches += 1
        self.updating = False

    def state_dict(self) -> dict[str, object]:
        return {
            "n_tokens": self.n_tokens,
            "batches": self.batches,
            "count": self.count,
            "total": self.total,
            "max": self.max,
            "hist": self.hist,
            **{
                f"{name}.{k}": v
                for name in ("top", "samples", "random")
                for k, v in getattr(self, name)._asdict().items()
            },
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.n_tokens, self.batches = int(state["n_tokens"]), int(state["batches"])  # type: ignore[call-overload]
        self.count, self.total, self.max, self.hist = (state[k] for k in ("count", "total", "max", "hist"))  # type: ignore[assignment]
        for name in ("top", "samples", "random"):
            setattr(self, name, Buffer(*(state[f"{name}.{k}"] for k in Buffer._fields)))  # type: ignore[arg-type]
        if self.count.shape != (self.n,):
            raise ValueError(f"state holds {self.count.shape[0]} features, not {self.n}")

    def finalize(self) -> Results:
        return Results.of(self)


class Entry(NamedTuple):
    kind: str
    rank: int
    band: int | None
    activation: float
    seq: int
    start: int
    peak: int
    window: np.ndarray  # (width,) float16


class Results(NamedTuple):
    """What the analysis records, per feature."""

    n_tokens: int
    n_fired: Tensor  # (n,) tokens fired on
    freq: Tensor  # (n,)
    max: Tensor  # (n,)
    mean: Tensor  # (n,) mean activation over the tokens it fires on
    hist: Tensor  # (n, bins)
    contexts: list[list[Entry]]  # per feature: top (rank order), quantile samples (band order), random

    @classmethod
    def of(cls, c: FeatureCollector) -> Results:
        freq = c.count.double() / max(c.n_tokens, 1)
        mean = c.total / c.count.clamp(min=1)
        return cls(c.n_tokens, c.count, freq.float(), c.max, mean.float(), c.hist, _contexts(c))


def quantile_bands(acts: Tensor, n_bands: int) -> Tensor:
    """Band of each sampled activation (0 = lowest) when the sorted sample is cut into ``n_bands``
    groups of equal count: acts (m,) -> (m,) long."""
    m = acts.shape[0]
    order = acts.argsort(stable=True)
    band = torch.empty(m, dtype=torch.long)
    band[order] = torch.arange(m) * n_bands // max(m, 1)
    return band


def _entries(buf: dict[str, np.ndarray], j: int, kind: str, by: str, descending: bool) -> list[Entry]:
    ok = np.flatnonzero(np.isfinite(buf["keys"][:, j]))
    key = buf[by][ok, j]
    order = ok[np.argsort(-key if descending else key, kind="stable")]
    act, seq, start, peak, window = (buf[k] for k in ("act", "seq", "start", "peak", "window"))
    return [
        Entry(
            kind, r, None, float(act[i, j]), int(seq[i, j]), int(start[i, j]), int(peak[i, j]), window[i, j]
        )
        for r, i in enumerate(order)
    ]


def _contexts(c: FeatureCollector) -> list[list[Entry]]:
    # numpy: per-feature indexing of torch tensors costs microseconds each, 10^6 times over
    top, samples, random = (
        {k: v.numpy() for k, v in b._asdict().items()} for b in (c.top, c.samples, c.random)
    )
    out = []
    for j in range(c.n):
        sampled = _entries(samples, j, "quantile", "act", descending=False)
        bands = quantile_bands(torch.tensor([e.activation for e in sampled]), c.cfg.n_bands).tolist()
        out.append(
            _entries(top, j, "top", "act", descending=True)
            + [e._replace(band=b) for e, b in zip(sampled, bands, strict=True)]
            + _entries(random, j, "random", "seq", descending=False)
        )
    return out
