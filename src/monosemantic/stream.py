"""On-the-fly training data: harvest activations window by window and feed them straight to the
trainer, for runs whose activations would not fit on disk.

The corpus is cut into windows of ``window_seqs`` packed sequences. Each window is run through the
model, its outliers dropped, shuffled with a generator seeded by (seed, window) and cut into
batches (the remainder is dropped). Step s therefore lives in a window that depends only on s, so
a resumed run skips the earlier windows without running the model on them: the corpus position
is part of the step count stored in every checkpoint.

Under data parallelism each rank runs the model on its share of a window's sequences and the
activations are gathered, so every rank sees the window a single process would.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

import torch
from torch import Tensor

from monosemantic.activations import finite_rows, inlier_mask, normalization_scale
from monosemantic.corpus import iter_sequences, load_texts
from monosemantic.distributed import DistContext
from monosemantic.errors import UserError
from monosemantic.models import LoadedModel, capture_residual


def window_activations(
    lm: LoadedModel, layer: int, seqs: Tensor, batch_size: int, outlier_ratio: float, dist: DistContext | None
) -> Tensor:
    """Inlier activations (N, d) of positions ≥ 1 of ``seqs`` (n, T), in sequence order."""
    mine = seqs if dist is None else seqs[dist.rank :: dist.world]
    parts = []
    for i in range(0, len(mine), batch_size):
        resid = capture_residual(lm, layer, mine[i : i + batch_size])  # (B, T, d)
        parts.append(resid[:, 1:].float())
    acts = torch.cat(parts) if parts else torch.empty(0, seqs.shape[1] - 1, lm.d_model, device=lm.device)
    if dist is not None:  # gathered on the model's device: NCCL only moves GPU tensors
        acts = dist.gather_rows(acts, n_total=len(seqs))
    acts = acts.reshape(-1, acts.shape[-1]).cpu()
    keep = inlier_mask(acts, outlier_ratio)  # NaN/Inf rows (a float16 model's overflow) count as outliers
    finite_rows(acts, keep, f"layer {layer} activations", per_seq=seqs.shape[1] - 1)
    return acts[keep]


class ActivationStream:
    """Shuffled, normalised (B, d) batches harvested on the fly from ``corpus``."""

    def __init__(
        self,
        lm: LoadedModel,
        layer: int,
        corpus: str,
        *,
        seq_len: int,
        window_seqs: int,
        batch_size: int,
        seed: int,
        outlier_ratio: float,
        eval_fraction: float,
        harvest_batch_size: int = 16,
        dist: DistContext | None = None,
    ) -> None:
        self.lm, self.layer, self.corpus = lm, layer, corpus
        self.seq_len, self.window_seqs, self.batch_size, self.seed = seq_len, window_seqs, batch_size, seed
        self.outlier_ratio, self.eval_fraction = outlier_ratio, eval_fraction
        self.harvest_batch_size, self.dist = harvest_batch_size, dist
        # Outliers vary per window, so a window yields a little less than window_seqs * (T-1) rows;
        # a fixed, conservative batch count per window keeps step -> window a pure function.
        self.batches_per_window = max(1, int(0.95 * window_seqs * (seq_len - 1)) // batch_size)

    def windows(self, start: int = 0) -> Iterator[Tensor]:
        """Unnormalised inlier activations (N, d) of windows ``start, start+1, ...`` until the
        corpus's training split runs out (tokenizing it once, not once per window)."""
        seqs = iter_sequences(
            load_texts(self.corpus),
            self.lm.tokenizer,
            self.seq_len,
            split="train",
            eval_fraction=self.eval_fraction,
        )
        for _ in islice(seqs, start * self.window_seqs):
            pass
        while len(chunk := list(islice(seqs, self.window_seqs))) == self.window_seqs:
            yield window_activations(
                self.lm,
                self.layer,
                torch.tensor(chunk),
                self.harvest_batch_size,
                self.outlier_ratio,
                self.dist,
            )

    def scale(self) -> float:
        """The normalisation scale, measured on window 0 (the same window in every run)."""
        first = next(self.windows(0), None)
        if first is None:
            raise UserError(
                f"the corpus holds fewer than {self.window_seqs} training sequences of "
                f"{self.seq_len} tokens: lower --window-seqs or use more text"
            )
        return normalization_scale(first)

    def batches(self, scale: float, start_step: int = 0) -> Iterator[Tensor]:
        """Normalised global batches from ``start_step`` on."""
        w, offset = divmod(start_step, self.batches_per_window)
        for acts in self.windows(w):
            if len(acts) < self.batches_per_window * self.batch_size:
                raise UserError(f"window {w} has too many outlier activations: raise --outlier-ratio")
            perm = torch.randperm(
                len(acts), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + w)
            )
            for b in range(offset, self.batches_per_window):
                yield acts[perm[b * self.batch_size : (b + 1) * self.batch_size]] * scale
            w, offset = w + 1, 0
        raise UserError(
            f"the corpus ran out after {w} windows of {self.window_seqs} sequences: "
            "lower --tokens or give a larger --corpus"
        )
