"""Anthropic's dead-feature resampling (Towards Monosemanticity, 2023), for the ReLU SAE.

A feature that has stopped firing gets a new direction: an input the dictionary reconstructs badly,
sampled with probability proportional to its squared loss. Its decoder column becomes that input's
direction (at the alive columns' mean norm), its encoder row the same direction scaled to 0.2 x the
alive rows' mean norm, its encoder bias 0, and Adam forgets its moments for those entries.
"""

from __future__ import annotations

import torch
from torch import Tensor

from monosemantic.sae import SparseAutoencoder

RESAMPLE_AT = (0.1, 0.2, 0.3, 0.4)  # fractions of training, all before the LR decay starts


def resample_steps(total: int) -> set[int]:
    return {int(f * total) for f in RESAMPLE_AT if int(f * total) > 0}


@torch.no_grad()
def resample_dead(
    sae: SparseAutoencoder, opt: torch.optim.Optimizer, dead: Tensor, x: Tensor, generator: torch.Generator
) -> int:
    """Resample the features in ``dead`` (n,) bool from inputs x (B, d); returns how many."""
    idx = dead.nonzero().squeeze(1)
    if len(idx) == 0 or bool(dead.all()):
        return 0
    loss = (sae(x).recon - x).pow(2).sum(-1)  # (B,)
    probs = (loss.pow(2) + 1e-12).cpu().double()
    picks = torch.multinomial(probs, len(idx), replacement=True, generator=generator).to(x.device)
    directions = x[picks] - sae.b_dec  # (k, d)
    directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    dec_norm = sae.W_dec[:, alive].norm(dim=0).mean()
    enc_norm = sae.W_enc[alive].norm(dim=1).mean()
    sae.W_dec[:, idx] = directions.T * dec_norm
    sae.W_enc[idx] = directions * 0.2 * enc_norm
    sae.b_enc[idx] = 0.0
    for param, rows in ((sae.W_enc, (idx,)), (sae.b_enc, (idx,)), (sae.W_dec, (slice(None), idx))):
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in opt.state.get(param, {}):
                opt.state[param][moment][rows] = 0.0
    return len(idx)
