"""Logit effects: what a feature's decoder direction does to the output vocabulary directly.

For a causal LM the direct effect of adding direction v to the residual stream is
``W_U · norm(v)`` with the final norm applied to v alone (its per-token scale set aside), minus
what the norm gives for a zero vector (LayerNorm's bias), so only the direction counts. The
tokens with the largest and smallest effect are what the feature promotes and suppresses, as in
the logit-effect lists of *Scaling Monosemanticity*. Effects skip the later blocks: they are the
direct path only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from monosemantic.models import LoadedModel

_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "final_norm")


class LogitEffects(NamedTuple):
    promoted: list[list[tuple[int, float]]]
    """Per feature: (token id, logit effect) of the most promoted tokens, largest first."""
    suppressed: list[list[tuple[int, float]]]
    """Per feature: the most suppressed tokens, most negative first."""


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied between the last block and the unembedding (identity if none is found)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    for name in _FINAL_NORMS:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return nn.Identity()


@torch.no_grad()
def direct_logit_effects(lm: LoadedModel, directions: Tensor, batch: int = 256) -> Tensor:
    """directions (n, d) -> (n, vocab) direct logit effects; needs a causal LM."""
    unembed = lm.model.get_output_embeddings()  # type: ignore[operator]
    if not lm.is_causal or not isinstance(unembed, nn.Module):
        raise ValueError(f"{lm.name} has no unembedding: logit effects need a causal LM")
    norm = final_norm(lm.model)
    device = lm.device
    zero = unembed(norm(torch.zeros(1, directions.shape[1], device=device)))
    out = []
    for i in range(0, len(directions), batch):
        v = directions[i : i + batch].to(device)
        # unit rms in, so every direction goes through the norm at the same scale
        v = v / v.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-12)
        out.append((unembed(norm(v)) - zero).float().cpu())
    return torch.cat(out)


def top_logit_effects(lm: LoadedModel, directions: Tensor, k: int = 10) -> LogitEffects:
    promoted, suppressed = [], []
    for i in range(0, len(directions), 256):
        eff = direct_logit_effects(lm, directions[i : i + 256])
        hi, lo = eff.topk(k, dim=1), eff.topk(k, dim=1, largest=False)
        promoted += [list(zip(ix.tolist(), v.tolist(), strict=True)) for v, ix in zip(*hi, strict=True)]
        suppressed += [list(zip(ix.tolist(), v.tolist(), strict=True)) for v, ix in zip(*lo, strict=True)]
    return LogitEffects(promoted, suppressed)
