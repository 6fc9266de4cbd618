"""Evaluate saved dictionaries on held-out activations -> ``metrics.json`` per dictionary.

Reconstruction metrics are computed on the normalised scale the dictionary was trained on
(activations times the store's scale), so MSE is comparable across models and layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monosemantic.activations import ActivationStore, inlier_mask
from monosemantic.config import EvalConfig
from monosemantic.dictionary import load_dictionary
from monosemantic.errors import UserError
from monosemantic.fsio import file_digest, fingerprint, read_json, write_json
from monosemantic.models import LoadedModel, edit_residual, next_token_loss
from monosemantic.progress import Throughput, progress_bar
from monosemantic.sae import SparseAutoencoder

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10% of tokens is "dense"
DEAD_MIN_TOKENS = 1_000_000


@torch.no_grad()
def reconstruction_metrics(
    sae: SparseAutoencoder, store: ActivationStore, batch_size: int, device: str
) -> dict[str, Any]:
    """L0, variance explained and MSE over every held-out activation. ``sae`` acts on raw
    activations (scale folded in); errors are reported on the training scale."""
    n, sq_err, l0_sum = 0, 0.0, 0.0
    s1 = torch.zeros(sae.d_model, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    for acts in store.iter_split("eval"):
        for i in range(0, len(acts), batch_size):
            x = acts[i : i + batch_size].to(device)
            out = sae(x)
            l0_sum += (out.feats > 0).sum().item()
            sq_err += ((out.recon - x) * store.scale).double().pow(2).sum().item()
            xs = (x * store.scale).double()
            s1 += xs.sum(0)
            s2 += xs.pow(2).sum()
            n += len(x)
    if n == 0:
        raise UserError("the store has no held-out activations: rerun harvest with --eval-tokens > 0")
    total_var = (s2 - s1.pow(2).sum() / n).item()  # Σ‖x − mean‖²
    return {
        "n_features": sae.n_features,
        "n_eval_tokens": n,
        "l0": l0_sum / n,
        "variance_explained": 1.0 - sq_err / total_var,
        "mse": sq_err / n,
    }


def density_tokens(store: ActivationStore) -> Iterator[Tensor]:
    """Activations for firing statistics: the held-out split, then training shards, until
    DEAD_MIN_TOKENS (DESIGN.md: dead = never fires on >= 1e6 tokens, or on the whole store)."""
    seen = 0
    for split in ("eval", "train"):
        for acts in store.iter_split(split):
            yield acts
            seen += len(acts)
            if seen >= DEAD_MIN_TOKENS:
                return


@torch.no_grad()
def firing_density(
    saes: dict[str, SparseAutoencoder],
    chunks: Iterable[Tensor],
    batch_size: int,
    device: str,
    on_chunk: Any = None,
) -> dict[str, dict[str, Any]]:
    """Per dictionary: dead and dense fractions and the histogram of log10 firing frequency
    (encoder only; each chunk of activations is read once for all dictionaries)."""
    n = 0
    fires = {k: torch.zeros(sae.n_features, dtype=torch.long, device=device) for k, sae in saes.items()}
    for acts in chunks:
        for i in range(0, len(acts), batch_size):
            x = acts[i : i + batch_size].to(device)
            for k, sae in saes.items():
                fires[k] += (sae.encode(x)[1] > 0).sum(0)
        n += len(acts)
        if on_chunk is not None:
            on_chunk(len(acts))
    out = {}
    for k, f in fires.items():
        freq = f.double().cpu() / max(n, 1)
        alive = freq[freq > 0]
        lo = float(math.floor(math.log10(1 / max(n, 1))))  # the rarest frequency n tokens can show
        counts, edges = torch.histogram(alive.log10(), bins=40, range=(lo, 0.0))
        out[k] = {
            "n_density_tokens": n,
            "dead_fraction": (freq == 0).double().mean().item(),
            "dense_fraction": (freq > DENSE_THRESHOLD).double().mean().item(),
            "density_histogram": {
                "bin_edges": edges.tolist(),
                "counts": [int(c) for c in counts.tolist()],
                "n_dead": int((freq == 0).sum()),
            },
        }
    return out


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
def spliced_losses(
    lm: LoadedModel,
    layer: int,
    saes: dict[str, SparseAutoencoder],
    seqs: Tensor,
    outlier_ratio: float,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Next-token loss with the residual entering block ``layer`` left alone (clean), zeroed
    (zero-ablation) and replaced by each dictionary's reconstruction, at positions ≥ 1 that are
    not outliers (the positions the store trains on; the others keep their clean value)."""

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
            rest = h[:, 1:].float()
            keep = inlier_mask(rest, outlier_ratio).unsqueeze(-1)
            return torch.cat([h[:, :1], torch.where(keep, fn(rest), rest).to(h.dtype)], dim=1)

        return edit

    clean = run(None)
    zero = run(keep_first(torch.zeros_like))
    out = {}
    for name, sae in saes.items():
        spliced = run(keep_first(lambda h, sae=sae: sae(h).recon))
        out[name] = {
            "loss_clean": clean,
            "loss_spliced": spliced,
            "loss_zero": zero,
            "loss_recovered": (zero - spliced) / (zero - clean),
        }
    return out


def evaluate(
    run_dir: Path,
    cfg: EvalConfig,
    *,
    device: str,
    lm: LoadedModel | None,
    layer: int,
    sae_dirs: list[Path],
    force: bool = False,
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Write ``metrics.json`` beside each dictionary in ``sae_dirs``; return them by name, and the
    names whose metrics were already up to date: a ``metrics.json`` measured on the same
    dictionary file, store and settings is kept (unless ``force``): a rerun costs seconds."""
    store = ActivationStore(run_dir)
    settings = {k: v for k, v in asdict(cfg).items() if k != "device"}
    keys = {
        d.name: fingerprint(
            file_digest(d / "sae.safetensors"), settings, store.manifest["shards"], lm is not None
        )
        for d in sae_dirs
    }
    results: dict[str, dict[str, Any]] = {}
    for d in sae_dirs:
        path = d / "metrics.json"
        if not force and path.is_file():
            try:
                old = read_json(path)
            except UserError:
                continue  # corrupt: measured again
            if isinstance(old, dict) and old.get("key") == keys[d.name]:
                results[d.name] = old
    reused = sorted(results)
    todo = [d for d in sae_dirs if d.name not in results]
    if todo:
        results.update(_measure(store, cfg, device, lm, layer, todo, keys))
    return results, reused


def _measure(
    store: ActivationStore,
    cfg: EvalConfig,
    device: str,
    lm: LoadedModel | None,
    layer: int,
    sae_dirs: list[Path],
    keys: dict[str, str],
) -> dict[str, dict[str, Any]]:
    saes = {d.name: load_dictionary(d, device)[0] for d in sae_dirs}
    results: dict[str, dict[str, Any]] = {}
    meter = Throughput()
    n_density = min(store.n_tokens("eval") + store.n_tokens("train"), DEAD_MIN_TOKENS)
    with progress_bar() as bar:
        task = bar.add_task("reconstruction", total=len(saes) * store.n_tokens("eval"), info="")
        for name, sae in saes.items():
            results[name] = reconstruction_metrics(sae, store, cfg.batch_size, device)
            bar.update(task, advance=results[name]["n_eval_tokens"], info=name)
            meter.add(results[name]["n_eval_tokens"])
        task = bar.add_task("feature density", total=n_density, info="")
        density = firing_density(
            saes,
            density_tokens(store),
            cfg.batch_size,
            device,
            on_chunk=lambda k: bar.update(task, advance=k),
        )
        for name in saes:
            results[name].update(density[name])
            meter.add(density[name]["n_density_tokens"])
    if lm is not None and lm.is_causal and cfg.loss_sequences > 0:
        seqs = eval_sequences(store, cfg.loss_sequences)
        for name, losses in spliced_losses(lm, layer, saes, seqs, store.outlier_ratio).items():
            results[name].update(losses, n_loss_sequences=len(seqs))
    for d in sae_dirs:
        results[d.name]["evaluate"] = meter.as_dict()
        results[d.name]["key"] = keys[d.name]
        write_json(d / "metrics.json", results[d.name])
    return results
