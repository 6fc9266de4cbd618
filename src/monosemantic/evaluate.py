"""Evaluate saved dictionaries on held-out activations -> ``metrics.json`` per dictionary.

Reconstruction metrics are computed on the normalised scale the dictionary was trained on
(activations times the store's scale), so MSE is comparable across models and layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monosemantic.activations import ActivationStore
from monosemantic.config import EvalConfig
from monosemantic.dictionary import load_dictionary
from monosemantic.errors import UserError
from monosemantic.fsio import write_json
from monosemantic.models import LoadedModel, edit_residual, next_token_loss
from monosemantic.progress import Throughput, progress_bar
from monosemantic.sae import ReluSAE

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10% of tokens is "dense"


@torch.no_grad()
def reconstruction_metrics(sae: ReluSAE, store: ActivationStore, batch_size: int, device: str) -> dict[str, Any]:
    """L0, variance explained, MSE, dead/dense fractions and the log10 firing-density histogram
    over every held-out activation. ``sae`` acts on raw activations (scale folded in)."""
    n, sq_err, l0_sum = 0, 0.0, 0.0
    fires = torch.zeros(sae.n_features, dtype=torch.long, device=device)
    s1 = torch.zeros(sae.d_model, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    for acts, _ in store.iter_split("eval"):
        for i in range(0, len(acts), batch_size):
            x = acts[i : i + batch_size].to(device)
            out = sae(x)
            active = out.feats > 0
            fires += active.sum(0)
            l0_sum += active.sum().item()
            # Errors on the training scale: the raw error times the store's scale.
            sq_err += ((out.recon - x) * store.scale).double().pow(2).sum().item()
            xs = (x * store.scale).double()
            s1 += xs.sum(0)
            s2 += xs.pow(2).sum()
            n += len(x)
    if n == 0:
        raise UserError("the store has no held-out activations: rerun harvest with --eval-tokens > 0")
    total_var = (s2 - s1.pow(2).sum() / n).item()  # Σ‖x − mean‖²
    freq = fires.double().cpu() / n
    alive = freq[freq > 0]
    lo = min(-8.0, float(alive.log10().min())) if len(alive) else -8.0
    counts, edges = torch.histogram(alive.log10(), bins=40, range=(lo, 0.0)) if len(alive) else (torch.zeros(40), torch.linspace(lo, 0, 41))
    return {
        "n_features": sae.n_features,
        "n_eval_tokens": n,
        "l0": l0_sum / n,
        "variance_explained": 1.0 - sq_err / total_var,
        "mse": sq_err / n,
        "dead_fraction": (freq == 0).double().mean().item(),
        "dense_fraction": (freq > DENSE_THRESHOLD).double().mean().item(),
        "density_histogram": {"bin_edges": edges.tolist(), "counts": [int(c) for c in counts.tolist()],
                              "n_dead": int((freq == 0).sum())},
    }


def eval_sequences(store: ActivationStore, n: int) -> Tensor:
    """Up to ``n`` held-out token sequences (n, seq_len) from the eval shards."""
    seqs = []
    for shard in store.shards("eval"):
        seqs.append(store.load(shard)[1])
        if sum(len(s) for s in seqs) >= n:
            break
    if not seqs:
        raise UserError("the store has no held-out sequences: rerun harvest with --eval-tokens > 0")
    return torch.cat(seqs)[:n]


@torch.no_grad()
def spliced_losses(lm: LoadedModel, layer: int, saes: dict[str, ReluSAE], seqs: Tensor,
                   batch_size: int = 8) -> dict[str, dict[str, float]]:
    """Next-token loss with the residual entering block ``layer`` left alone (clean), zeroed
    (zero-ablation) and replaced by each dictionary's reconstruction, at positions ≥ 1."""

    def run(edit: Any) -> float:
        losses = []
        for i in range(0, len(seqs), batch_size):
            chunk = seqs[i : i + batch_size]
            if edit is None:
                losses.append(next_token_loss(lm, chunk).item())
            else:
                with edit_residual(lm, layer, edit):
                    losses.append(next_token_loss(lm, chunk).item())
        return sum(losses) / len(losses)

    def keep_first(fn: Any) -> Any:
        def edit(h: Tensor) -> Tensor:
            return torch.cat([h[:, :1], fn(h[:, 1:].float()).to(h.dtype)], dim=1)

        return edit

    clean = run(None)
    zero = run(keep_first(torch.zeros_like))
    out = {}
    for name, sae in saes.items():
        spliced = run(keep_first(lambda h, sae=sae: sae(h).recon))
        out[name] = {"loss_clean": clean, "loss_spliced": spliced, "loss_zero": zero,
                     "loss_recovered": (zero - spliced) / (zero - clean)}
    return out


def evaluate(run_dir: Path, cfg: EvalConfig, *, device: str, lm: LoadedModel | None, layer: int,
             sae_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Write ``metrics.json`` beside each dictionary in ``sae_dirs``; return them by name."""
    store = ActivationStore(run_dir)
    saes = {d.name: load_dictionary(d, device)[0] for d in sae_dirs}
    results: dict[str, dict[str, Any]] = {}
    meter = Throughput()
    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=len(saes) * store.n_tokens("eval"), info="")
        for name, sae in saes.items():
            results[name] = reconstruction_metrics(sae, store, cfg.batch_size, device)
            bar.update(task, advance=results[name]["n_eval_tokens"], info=name)
            meter.add(results[name]["n_eval_tokens"])
    if lm is not None and lm.is_causal and cfg.loss_sequences > 0:
        seqs = eval_sequences(store, cfg.loss_sequences)
        for name, losses in spliced_losses(lm, layer, saes, seqs).items():
            results[name].update(losses, n_loss_sequences=len(seqs))
    for d in sae_dirs:
        write_json(d / "metrics.json", {**results[d.name], "evaluate": meter.as_dict()})
    return results
