"""Logit effects: what a feature's decoder direction does to the output vocabulary directly.

For a causal LM the direct effect of adding direction v to the residual stream after the last block
is ``logits(v) − logits(0)`` through the model's own output path (``unembed.output_path``: final
norm, OPT's projection, the unembedding, Gemma-2's soft-capping), with v scaled to unit RMS so that
every direction goes through the norm at the same scale; subtracting ``logits(0)`` removes what the
path adds for no input (LayerNorm's bias), so only the direction counts. The tokens with the
largest and smallest effect are what the feature promotes and suppresses, as in the logit-effect
lists of *Scaling Monosemanticity*. Effects skip the later blocks: they are the direct path only.
Directions are float32 (a dictionary's decoder) and are cast to the model's dtype; effects come
back float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from monosemantic.models import LoadedModel, to_model
from monosemantic.unembed import output_path


class LogitEffects(NamedTuple):
    promoted: list[list[tuple[int, float]]]
    """Per feature: (token id, logit effect) of the most promoted tokens, largest first."""
    suppressed: list[list[tuple[int, float]]]
    """Per feature: the most suppressed tokens, most negative first."""


@torch.no_grad()
def direct_logit_effects(lm: LoadedModel, directions: Tensor, batch: int = 256) -> Tensor:
    """directions (n, d_model), any dtype -> (n, vocab) float32 direct logit effects on the CPU.
    Raises UserError for a model without an output head."""
    path = output_path(lm)
    zero = path(to_model(lm, torch.zeros(1, directions.shape[1])))
    out = []
    for i in range(0, len(directions), batch):
        v = directions[i : i + batch].float()
        v = v / v.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-12)
        out.append((path(to_model(lm, v)) - zero).float().cpu())
    return torch.cat(out)


def top_logit_effects(lm: LoadedModel, directions: Tensor, k: int = 10) -> LogitEffects:
    promoted, suppressed = [], []
    for i in range(0, len(directions), 256):
        eff = direct_logit_effects(lm, directions[i : i + 256])
        hi, lo = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        promoted += [list(zip(ix.tolist(), v.tolist(), strict=True)) for v, ix in zip(*hi, strict=True)]
        suppressed += [list(zip(ix.tolist(), v.tolist(), strict=True)) for v, ix in zip(*lo, strict=True)]
    return LogitEffects(promoted, suppressed)
