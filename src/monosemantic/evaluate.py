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
from monosemantic.core_metrics import CORE_DEFINITIONS, CoreDownstream, CoreReconstruction
from monosemantic.dictionary import load_dictionary
from monosemantic.errors import UserError
from monosemantic.fsio import file_digest, fingerprint, read_json, write_json
from monosemantic.models import LoadedModel, edit_residual
from monosemantic.progress import Throughput, progress_bar
from monosemantic.sae import SparseAutoencoder

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10% of tokens is "dense"
DEAD_MIN_TOKENS = 1_000_000
METRICS_VERSION = 3
"""Part of each metrics.json's key: a metrics.json written before a metric was added (version 2:
KL divergence, loss recovered n/a when undefined; 3: the SAELens/SAEBench core metrics) is
measured again rather than kept."""


@torch.no_grad()
def reconstruction_metrics(
    sae: SparseAutoencoder, store: ActivationStore, batch_size: int, device: str
) -> dict[str, Any]:
    """L0, variance explained and MSE over every held-out activation. ``sae`` acts on raw
    activations (scale folded in); errors are reported on the training scale. ``core`` holds the
    SAELens/SAEBench reconstruction and sparsity metrics of the same activations (raw scale)."""
    n, sq_err, l0_sum = 0, 0.0, 0.0
    core = CoreReconstruction(sae.n_features, device)
    s1 = torch.zeros(sae.d_model, dtype=torch.float64, device=device)
    s2 = torch.zeros((), dtype=torch.float64, device=device)
    batch_size = rows_per_batch(batch_size, sae.n_features)
    for acts in store.iter_split("eval"):
        for i in range(0, len(acts), batch_size):
            x = acts[i : i + batch_size].to(device)
            out = sae(x)
            core.add(x, out.feats, out.recon)
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
        "core": {"definitions": CORE_DEFINITIONS, **core.result()},
    }


MAX_BATCH_ELEMENTS = 1 << 25
"""The most (rows x features) entries one evaluation batch holds per dictionary (128 MiB of float32
per (B, n) temporary): a wide dictionary is evaluated in fewer rows at a time, so that memory does
not grow with its width (36,864 features at 4,096 rows peaked at 8.7 GiB on the full run)."""


def rows_per_batch(batch_size: int, n_features: int) -> int:
    """How many activations to encode at once for a dictionary of ``n_features``: ``batch_size``,
    or fewer when (rows x n_features) would pass MAX_BATCH_ELEMENTS; at least 1."""
    return max(1, min(batch_size, MAX_BATCH_ELEMENTS // max(n_features, 1)))


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
    batch_size = rows_per_batch(batch_size, max((sae.n_features for sae in saes.values()), default=1))
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


MIN_ABLATION_GAP = 0.05
"""Nats per token by which zero-ablation must raise the loss over clean for loss recovered to be
reported (see ``loss_recovered``)."""


def loss_recovered(clean: float, spliced: float, zero: float, gap_se: float) -> tuple[float | None, str]:
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean), or None and the reason when zero-ablation is
    not clearly worse than clean: when CE_zero − CE_clean is below ``MIN_ABLATION_GAP`` nats or
    below twice its standard error over sequences (``gap_se``). The ratio divides by that gap, so
    a gap near 0 (a layer the model barely uses, e.g. in a random or tiny model) makes it noise of
    any sign and size: a Qwen2 with clean 10.825, zero 10.812, spliced 10.827 gave "1.165"."""
    gap = zero - clean
    need = max(MIN_ABLATION_GAP, 2 * gap_se)
    if not gap >= need:  # also when NaN
        return None, (
            "zero-ablation is not clearly worse than clean: CE_zero − CE_clean = "
            f"{gap:.4f} nats < {need:.4f} (max of {MIN_ABLATION_GAP} and 2 standard errors over sequences)"
        )
    return (zero - spliced) / gap, ""


def _log_probs(lm: LoadedModel, ids: Tensor) -> Tensor:
    """(B, T) -> (B, T-1, vocab) float32 next-token log-probabilities at positions 1..T-1 (position 0
    is never edited; ``next_token_loss`` scores 1..T-2, the SAELens KL also T-1)."""
    return torch.log_softmax(lm.model(input_ids=ids, use_cache=False).logits[:, 1:].float(), -1)


@torch.no_grad()
def spliced_losses(
    lm: LoadedModel,
    layer: int,
    saes: dict[str, SparseAutoencoder],
    seqs: Tensor,
    outlier_ratio: float,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """Next-token loss with the residual entering block ``layer`` left alone (clean), zeroed
    (zero-ablation) and replaced by each dictionary's reconstruction, at positions ≥ 1 that are
    not outliers (the positions the store trains on; the others keep their clean value); and the
    KL divergence KL(P_clean ‖ P_edited) of the next-token distributions, in nats, averaged over
    the same predictions (as SAELens's ``kl_div_with_sae``). The dictionary computes in float32
    whatever the model's dtype; its output is cast back by ``edit_residual``. Each result's
    ``core`` holds SAELens's CE-loss and KL-divergence scores (``core_metrics.CoreDownstream``:
    token-pooled, zero-ablation of every position)."""
    if not lm.is_causal:
        raise UserError(f"{lm.name} is not a causal language model: next-token loss is undefined")
    kept: list[Tensor] = []  # the last batch's kept positions, (B, T-1): the same in every pass

    def keep_first(fn: Any) -> Any:
        def edit(h: Tensor) -> Tensor:
            rest = h[:, 1:].float()
            keep = inlier_mask(rest, outlier_ratio)
            kept[:] = [keep]
            return torch.cat([h[:, :1], torch.where(keep.unsqueeze(-1), fn(rest), rest).to(h.dtype)], dim=1)

        return edit

    edits = {"zero": keep_first(torch.zeros_like)}
    edits |= {name: keep_first(lambda h, sae=sae: sae(h).recon) for name, sae in saes.items()}
    edits["zero_all"] = torch.zeros_like  # SAELens's ablation: every position, 0 included
    ce: dict[str, list[Tensor]] = {k: [] for k in ("clean", *edits)}  # per sequence, (B,)
    kl: dict[str, list[Tensor]] = {k: [] for k in edits}
    core = CoreDownstream()
    for i in range(0, len(seqs), batch_size):
        ids = seqs[i : i + batch_size].to(lm.device)
        targets = ids[:, 2:].unsqueeze(-1)
        clean = _log_probs(lm, ids)
        ce["clean"].append(-clean[:, :-1].gather(-1, targets).squeeze(-1).mean(1).cpu())
        for key, edit in edits.items():
            with edit_residual(lm, layer, edit):
                lp = _log_probs(lm, ids)
            ce[key].append(-lp[:, :-1].gather(-1, targets).squeeze(-1).mean(1).cpu())
            kl[key].append((clean.exp() * (clean - lp))[:, :-1].sum(-1).mean(1).cpu())
            if key == "zero":  # the first edit: it has recorded this batch's kept positions
                keep = kept[0]
                core.add_tokens(keep)
                core.add("clean", keep, clean, clean, targets)
            else:
                core.add(key, keep, clean, lp, targets)
    per_seq = {k: torch.cat(v).double() for k, v in ce.items()}
    gap = per_seq["zero"] - per_seq["clean"]
    gap_se = (gap.std() / math.sqrt(len(gap))).item() if len(gap) > 1 else 0.0
    mean = {k: v.mean().item() for k, v in per_seq.items()}
    kl_mean = {k: torch.cat(v).double().mean().item() for k, v in kl.items()}
    out: dict[str, dict[str, Any]] = {}
    for name in saes:
        recovered, why = loss_recovered(mean["clean"], mean[name], mean["zero"], gap_se)
        out[name] = {
            "loss_clean": mean["clean"],
            "loss_spliced": mean[name],
            "loss_zero": mean["zero"],
            "loss_zero_gap_se": gap_se,
            "loss_recovered": recovered,
            **({"loss_recovered_na": why} if recovered is None else {}),
            "kl_spliced": kl_mean[name],
            "kl_zero": kl_mean["zero"],
            "core": core.result(name),
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
            file_digest(d / "sae.safetensors"),
            settings,
            store.manifest["shards"],
            lm is not None,
            METRICS_VERSION,
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
            results[name]["core"].update(losses.pop("core"))
            results[name].update(losses, n_loss_sequences=len(seqs))
    for d in sae_dirs:
        results[d.name]["evaluate"] = meter.as_dict()
        results[d.name]["key"] = keys[d.name]
        write_json(d / "metrics.json", results[d.name])
    return results
