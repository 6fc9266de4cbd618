"""The community's "core" dictionary metrics (SAELens ``evals.run_evals``, SAEBench's core eval),
computed with their definitions beside ours; ``metrics.json`` keeps them under ``"core"``.

Definitions follow sae-lens 6.54 ``sae_lens/evals.py``; docs/metrics.md lists each one and where it
differs from our own metrics (scale, positions, zero-ablation). Both accumulators here take the
positions the dictionary is applied to (position ≥ 1, not an outlier: what the store holds) and
measure on the raw activation scale, as SAELens does with its activation scaler folded in.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

CORE_DEFINITIONS = "sae_lens 6.54 evals.run_evals (SAEBench core)"
"""Recorded in each ``core`` block: whose definitions its numbers follow."""


class CoreReconstruction:
    """Sums over held-out activations for SAELens's reconstruction, shrinkage and sparsity metrics
    and per-feature firing density. Sums are float64, so the result does not depend on batching."""

    def __init__(self, n_features: int, device: str | torch.device = "cpu") -> None:
        self.n = 0
        keys = ["sq_norm", "sq_resid", "cossim", "l0", "l1", "norm_in", "norm_out", "l2_ratio"]
        keys += ["xhat_sq", "dot"]
        self.sums: dict[str, float] = dict.fromkeys(keys, 0.0)
        self.sum_x: Tensor | None = None
        self.fires = torch.zeros(n_features, dtype=torch.long, device=device)

    @torch.no_grad()
    def add(self, x: Tensor, feats: Tensor, recon: Tensor) -> None:
        """One batch: ``x`` (N, d) activations, ``feats`` (N, n_features), ``recon`` (N, d) x̂,
        all on the raw activation scale."""
        x, recon = x.double(), recon.double()
        sx = x.sum(0)
        self.sum_x = sx if self.sum_x is None else self.sum_x + sx
        norm_in, norm_out = x.norm(dim=-1), recon.norm(dim=-1)
        dot = (x * recon).sum(-1)
        active = feats != 0  # != 0, as SAELens: counts signed activations too
        s = self.sums
        s["sq_norm"] += x.pow(2).sum().item()
        s["sq_resid"] += (x - recon).pow(2).sum().item()
        # a zero x̂ gives cosine 0 here (SAELens: NaN)
        s["cossim"] += (dot / (norm_in * norm_out).clamp_min(1e-30)).sum().item()
        s["l0"] += active.sum().item()
        s["l1"] += feats.double().abs().sum().item()
        s["norm_in"] += norm_in.sum().item()
        s["norm_out"] += norm_out.sum().item()
        # SAELens divides by 1 where ‖x‖ < 1e-4
        s["l2_ratio"] += (norm_out / torch.where(norm_in < 1e-4, 1.0, norm_in)).sum().item()
        s["xhat_sq"] += norm_out.pow(2).sum().item()
        s["dot"] += dot.sum().item()
        self.fires += active.sum(0).to(self.fires.device)
        self.n += len(x)

    def density(self) -> Tensor:
        """(n_features,) float64: the fraction of the tokens seen on which each feature fired
        (SAELens's ``feature_density``)."""
        return self.fires.double().cpu() / max(self.n, 1)

    def result(self) -> dict[str, Any]:
        """The metrics, with SAELens's names. Empty when no activation was added."""
        n, s = self.n, self.sums
        if n == 0 or self.sum_x is None:
            return {}
        total_var = s["sq_norm"] / n - (self.sum_x / n).pow(2).sum().item()  # E‖x‖² − ‖E x‖²
        mse = s["sq_resid"] / n
        density = self.density()
        return {
            "explained_variance": 1.0 - mse / total_var if total_var >= 1e-10 else float(mse < 1e-10),
            "mse": mse,
            "cossim": s["cossim"] / n,
            "l2_norm_in": s["norm_in"] / n,
            "l2_norm_out": s["norm_out"] / n,
            "l2_ratio": s["l2_ratio"] / n,
            # E‖x̂‖² / E⟨x, x̂⟩ over all tokens (Eq. 10 of arXiv:2404.16014; SAELens averages
            # per-batch ratios instead, which depends on the batch size)
            "relative_reconstruction_bias": s["xhat_sq"] / s["dot"] if s["dot"] else None,
            "l0": s["l0"] / n,
            "l1": s["l1"] / n,
            "frac_alive": (density > 0).double().mean().item(),
            "freq_over_1_percent": (density > 0.01).double().mean().item(),
            "freq_over_10_percent": (density > 0.1).double().mean().item(),
            "n_tokens_sparsity_variance": n,
        }


class CoreDownstream:
    """Token-pooled sums for SAELens's CE-loss and KL-divergence scores: clean, spliced (the
    dictionary's reconstruction at the kept positions) and zero-ablated (the whole residual at the
    layer set to 0, every position included: SAELens's ablation, unlike ours)."""

    def __init__(self) -> None:
        self.ce: dict[str, float] = {}
        self.kl: dict[str, float] = {}
        self.n_ce = 0
        self.n_kl = 0

    def add_tokens(self, keep: Tensor) -> None:
        """Count one batch's scored positions. ``keep`` (B, T-1) bool: positions 1..T-1 that the
        dictionary edits. CE scores the predictions made at those positions but the last (no
        target); KL scores all of them, the last included (SAELens)."""
        self.n_ce += int(keep[:, :-1].sum())
        self.n_kl += int(keep.sum())

    def add(self, key: str, keep: Tensor, clean: Tensor, lp: Tensor, targets: Tensor) -> None:
        """One batch of one condition. ``clean``/``lp`` (B, T-1, vocab) log-probabilities of the
        clean and edited model at positions 1..T-1; ``targets`` (B, T-2, 1) the next tokens of
        positions 1..T-2; ``keep`` as in ``add_tokens``."""
        ce = -lp[:, :-1].gather(-1, targets).squeeze(-1)
        self.ce[key] = self.ce.get(key, 0.0) + ce[keep[:, :-1]].double().sum().item()
        if key != "clean":
            kl = (clean.exp() * (clean - lp)).sum(-1)
            self.kl[key] = self.kl.get(key, 0.0) + kl[keep].double().sum().item()

    def result(self, key: str) -> dict[str, Any]:
        """SAELens's downstream metrics of the dictionary ``key`` (add()ed under that key)."""
        ce = {k: v / max(self.n_ce, 1) for k, v in self.ce.items()}
        kl = {k: v / max(self.n_kl, 1) for k, v in self.kl.items()}
        gap, kl_abl = ce["zero_all"] - ce["clean"], kl["zero_all"]
        return {
            "ce_loss_score": (ce["zero_all"] - ce[key]) / gap if gap else None,
            "ce_loss_with_sae": ce[key],
            "ce_loss_without_sae": ce["clean"],
            "ce_loss_with_ablation": ce["zero_all"],
            "kl_div_score": (kl_abl - kl[key]) / kl_abl if kl_abl else None,
            "kl_div_with_sae": kl[key],
            "kl_div_with_ablation": kl_abl,
            "n_tokens_ce": self.n_ce,
            "n_tokens_kl": self.n_kl,
        }
