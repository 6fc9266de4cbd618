"""Harvest residual-stream activations into a sharded store, and read them back in shuffled batches.

Layout of ``run/activations/``: ``manifest.json`` and ``shard-NNNNN.safetensors`` files, each with
``acts`` (N, d) in the store dtype, ``tokens`` (n_seq, seq_len) int32 and ``keep`` (N,) uint8;
``acts`` holds positions 1..seq_len-1 of each sequence in order (position 0, the attention sink with
a ~150x norm, is left out). ``keep`` is 0 for the rare later positions that are sinks too (norm above
``outlier_ratio`` x the shard median, e.g. runs of repeated whitespace tokens): a handful of those
would otherwise dominate the variance that metrics measure. The manifest is rewritten after every
shard, so a killed harvest resumes at the next shard.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import Tensor

from monosemantic.config import HarvestConfig, TrainConfig, resolve_device
from monosemantic.corpus import load_texts, take_sequences
from monosemantic.errors import UserError
from monosemantic.fsio import atomic_path, read_json, write_json
from monosemantic.integrity import crc32_bytes, crc32_file, read_checked
from monosemantic.models import (
    LoadedModel,
    ModelInfo,
    capture_residual,
    check_seq_len,
    load_model,
    model_info,
)
from monosemantic.progress import Throughput, progress_bar

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def resolve_layer(lm: LoadedModel, layer: int) -> int:
    """The block --layer names: -1 is the middle one; other negative values are refused."""
    return lm.check_layer(lm.n_layers // 2 if layer == -1 else layer)


def check_inputs(cfg: HarvestConfig) -> ModelInfo:
    """What can be checked about a harvest (or on-the-fly training) before anything is written:
    the model exists and its config fits --layer and --seq-len, the corpus exists. Raises
    ``UserError``; reads the model's config only, not its weights."""
    info = model_info(cfg.model)
    info.check_layer(cfg.layer)
    check_seq_len(info.name, info.max_positions, cfg.seq_len)
    load_texts(cfg.corpus)
    return info


def normalization_scale(acts: Tensor) -> float:
    """The scalar s with E‖s·x‖₂ = √d over ``acts`` (N, d), as in Anthropic's April 2024 update."""
    return math.sqrt(acts.shape[-1]) / acts.float().norm(dim=-1).mean().item()


def inlier_mask(acts: Tensor, ratio: float) -> Tensor:
    """(..., d) -> (...) bool: True where the norm is at most ``ratio`` x the median norm."""
    norms = acts.float().norm(dim=-1)
    return norms <= ratio * norms.nanmedian()  # NaN/Inf rows compare False: outliers


def finite_rows(acts: Tensor, keep: Tensor, where: str, first_seq: int = 0, per_seq: int = 0) -> Tensor:
    """``acts`` (N, d) with its masked (outlier) rows that are NaN/Inf set to zero, so that an
    attention sink that overflows float16 cannot poison the shard it sits in; an unmasked non-finite
    row is a ``UserError`` naming its sequence (rows run ``per_seq`` to a sequence, numbered from
    ``first_seq``; ``per_seq`` 0 names the row instead)."""
    bad = ~torch.isfinite(acts).all(dim=-1)
    if not bad.any():
        return acts
    kept_bad = (bad & keep).nonzero().flatten()
    if len(kept_bad):
        row = int(kept_bad[0])
        at = (
            f"sequence {first_seq + row // per_seq}, position {row % per_seq + 1}"
            if per_seq
            else f"row {row}"
        )
        raise UserError(
            f"{where}: {len(kept_bad)} activations that are not outliers are NaN/Inf (the first at {at}): "
            "use --store-dtype float32 (or --dtype float32) or a lower --outlier-ratio, and harvest again"
        )
    return acts.masked_fill(bad[:, None], 0.0)


def harvest(cfg: HarvestConfig, run_dir: Path, lm: LoadedModel | None = None) -> dict[str, Any]:
    """Fill ``run_dir/activations`` up to ``cfg.n_tokens`` train and ``cfg.n_eval_tokens`` eval
    activations, resuming after the last complete shard. Returns the manifest."""
    store = run_dir / "activations"
    lm = lm or load_model(cfg.model, device=resolve_device(cfg.device), dtype=cfg.dtype)
    layer = resolve_layer(lm, cfg.layer)
    lm.check_seq_len(cfg.seq_len)
    manifest: dict[str, Any] = (
        drop_bad_shards(store, read_json(store / MANIFEST))
        if (store / MANIFEST).is_file()
        else {
            "format": 1,
            "model": cfg.model,
            "layer": layer,
            "d_model": lm.d_model,
            "seq_len": cfg.seq_len,
            "store_dtype": cfg.store_dtype,
            "scale": None,
            "shards": [],
        }
    )
    per_seq = cfg.seq_len - 1
    seqs_per_shard = max(1, cfg.shard_tokens // per_seq)
    meter = Throughput()
    with progress_bar() as bar:
        for split, budget in (("train", 0 if cfg.on_the_fly else cfg.n_tokens), ("eval", cfg.n_eval_tokens)):
            done = sum(s["n_seqs"] for s in manifest["shards"] if s["split"] == split)
            want = math.ceil(budget / per_seq)
            if done >= want:
                continue
            seqs = take_sequences(
                load_texts(cfg.corpus),
                lm.tokenizer,
                cfg.seq_len,
                want - done,
                split=split,
                eval_fraction=cfg.eval_fraction,
                skip=done,
            )
            task = bar.add_task(f"harvest {split}", total=len(seqs) * per_seq, info="")
            for start in range(0, len(seqs), seqs_per_shard):
                chunk = seqs[start : start + seqs_per_shard]
                acts = _forward(lm, layer, chunk, cfg.batch_size, bar, task)
                name = f"shard-{len(manifest['shards']):05d}.safetensors"
                keep = inlier_mask(acts, cfg.outlier_ratio)  # NaN/Inf rows count as outliers
                # checked after the cast: float16 overflows at ~65504, which a sink can exceed
                stored = finite_rows(
                    acts.to(getattr(torch, cfg.store_dtype)),
                    keep,
                    f"harvest {split}, shard {name} ({cfg.store_dtype})",
                    first_seq=done + start,
                    per_seq=per_seq,
                )
                if manifest["scale"] is None:
                    manifest["scale"] = normalization_scale(acts[keep])
                data = save(
                    {
                        "acts": stored.contiguous(),
                        "tokens": chunk.to(torch.int32).contiguous(),
                        "keep": keep.to(torch.uint8),
                    }
                )
                write_shard(
                    store / name,
                    data,
                    need=(want - done - start) * per_seq * stored.element_size() * lm.d_model,
                )
                manifest["shards"].append(
                    {
                        "file": name,
                        "split": split,
                        "n_seqs": len(chunk),
                        "n_tokens": acts.shape[0],
                        "n_kept": int(keep.sum()),
                        "crc32": crc32_bytes(data),
                    }
                )
                meter.add(acts.shape[0])
                manifest["n_tokens"] = sum(s["n_tokens"] for s in manifest["shards"])
                manifest["harvest"] = {**meter.as_dict(), "config": asdict(cfg)}
                write_json(store / MANIFEST, manifest)
            if len(seqs) < want - done:
                manifest.setdefault("exhausted", []).append(split)
    return manifest


def write_shard(path: Path, data: bytes, need: int) -> None:
    """Write a shard's bytes atomically; a full disk is a ``UserError`` saying how much to free
    (``need``: the bytes the harvest still has to write)."""
    with atomic_path(path, need) as tmp:
        tmp.write_bytes(data)


def drop_bad_shards(store: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without its first missing, truncated or corrupt shard and every shard after it
    (shards are filled in order: a resumed harvest rewrites them byte for byte)."""
    for i, shard in enumerate(manifest["shards"]):
        path = store / shard["file"]
        try:
            ok = shard.get("crc32") is None or crc32_file(path) == shard["crc32"]
        except OSError:
            ok = False
        if not ok:
            log.warning(
                "%s is missing or corrupt: harvesting it and the %d shards after it again",
                path,
                len(manifest["shards"]) - i - 1,
            )
            manifest["shards"] = manifest["shards"][:i]
            manifest["n_tokens"] = sum(s["n_tokens"] for s in manifest["shards"])
            manifest.pop("exhausted", None)
            if i == 0:
                manifest["scale"] = None
            break
    return manifest


def _forward(lm: LoadedModel, layer: int, seqs: Tensor, batch_size: int, bar: Any, task: Any) -> Tensor:
    out = []
    for i in range(0, len(seqs), batch_size):
        resid = capture_residual(lm, layer, seqs[i : i + batch_size])  # (B, T, d)
        out.append(resid[:, 1:].reshape(-1, resid.shape[-1]).float().cpu())
        bar.update(task, advance=out[-1].shape[0])
    return torch.cat(out)


class ActivationStore:
    """Read side of the store: shard loading with checks, held-out iteration, shuffled batches."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "activations"
        if not (self.dir / MANIFEST).is_file():
            raise UserError(
                f"{run_dir} has no activation store: run `monosemantic harvest --out {run_dir}` first"
            )
        self.manifest = read_json(self.dir / MANIFEST)
        self._cached: tuple[tuple[int, ...], Tensor] | None = None  # see _group

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def scale(self) -> float:
        return float(self.manifest["scale"])

    def shards(self, split: str) -> list[dict[str, Any]]:
        return [s for s in self.manifest["shards"] if s["split"] == split]

    @property
    def outlier_ratio(self) -> float:
        return float(self.manifest["harvest"]["config"]["outlier_ratio"])

    def n_tokens(self, split: str) -> int:
        """Activations usable for training and metrics (outliers excluded)."""
        return sum(s["n_kept"] for s in self.shards(split))

    def load(self, shard: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(acts (N, d) float32, tokens (n_seq, seq_len) int64, keep (N,) bool), checked for
        corruption and NaN."""
        path = self.dir / shard["file"]
        rerun = (
            f"rerun `monosemantic harvest --out {self.dir.parent}` "
            "(it rewrites that shard and those after it)"
        )
        raw = read_checked(path, shard.get("crc32"), rerun)
        try:
            data = load(raw)
            acts, tokens, keep = data["acts"].float(), data["tokens"].long(), data["keep"].bool()
        except (SafetensorError, KeyError) as e:
            raise UserError(f"{path} is corrupt ({e}): {rerun}") from e
        if acts.shape != (shard["n_tokens"], self.d_model):
            raise UserError(
                f"{path} has shape {tuple(acts.shape)}, the manifest says {shard['n_tokens']}x{self.d_model}"
            )
        acts = finite_rows(acts, keep, str(path))  # masked rows of stores written before that check
        return acts, tokens, keep

    def kept(self, shard: dict[str, Any]) -> Tensor:
        """The shard's usable activations (n_kept, d), float32, unnormalised."""
        acts, _, keep = self.load(shard)
        return acts[keep]

    def iter_split(self, split: str) -> Iterator[Tensor]:
        """Usable activations of every shard of ``split``, shard by shard."""
        for shard in self.shards(split):
            yield self.kept(shard)

    def _group(self, group: tuple[int, ...], shards: list[dict[str, Any]]) -> Tensor:
        """The normalised activations of a group of training shards. The last group stays cached on
        the store, so that runs which read a small store again and again (a scaling sweep, every
        epoch of a store that fits one group) load it once."""
        if self._cached is None or self._cached[0] != group:
            # Drop the previous group first and fill one preallocated buffer shard by shard: the
            # peak is one group plus one shard, not the three groups (the old group, the shards'
            # list, their concatenation, then its scaled copy) that took 3.0 GB of RSS to train
            # from an 800k-token store against 1.1 GB from 200k (docs/benchmarks.md).
            self._cached = None
            total = sum(int(shards[i]["n_kept"]) for i in group)
            out, filled = torch.empty(total, self.d_model), 0
            for i in group:
                acts = self.kept(shards[i])
                if filled + len(acts) > total:  # a manifest count that disagrees with its shard
                    out = torch.cat([out[:filled], acts.new_empty(filled + len(acts) - total, self.d_model)])
                    total = filled + len(acts)
                out[filled : filled + len(acts)] = acts
                filled += len(acts)
            self._cached = (group, out[:filled].mul_(self.scale))
        return self._cached[1]

    def batch_source(self, cfg: TrainConfig) -> Callable[[int], Iterator[Tensor]]:
        """What the trainer reads: step -> the training batches of ``cfg`` from that step on."""
        return lambda step: self.batches(cfg.batch_size, cfg.seed, cfg.buffer_shards, step)

    def batches(
        self, batch_size: int, seed: int, buffer_shards: int, start_step: int = 0
    ) -> Iterator[Tensor]:
        """An endless stream of shuffled (batch_size, d) training batches, normalised by ``scale``.

        Epoch e visits the shards in a seeded random order, ``buffer_shards`` at a time, and
        shuffles the activations of each group. The order depends only on (seed, step), so a resumed
        run that starts at ``start_step`` sees exactly the batches an uninterrupted run would."""
        shards = self.shards("train")
        sizes = [s["n_kept"] for s in shards]
        if sum(sizes) < batch_size:
            raise UserError(
                f"the store holds {sum(sizes)} training activations, fewer than one batch "
                f"of {batch_size}: harvest more (--tokens) or lower --batch-size"
            )
        step, epoch, loaded, buffer = 0, 0, None, torch.empty(0)
        while True:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            order = torch.randperm(len(shards), generator=g).tolist()
            for w in range(0, len(order), buffer_shards):
                group = tuple(order[w : w + buffer_shards])
                n = sum(sizes[i] for i in group)
                perm = torch.randperm(n, generator=g)
                for b in range(n // batch_size):
                    if step >= start_step:
                        if loaded != group:
                            buffer = torch.empty(0)  # let the old group go before the new one loads
                            buffer, loaded = self._group(group, shards), group
                        yield buffer[perm[b * batch_size : (b + 1) * batch_size]]
                    step += 1
            epoch += 1
