"""Train several dictionary sizes together from one stream of activation batches.

The trainer knows nothing about the language model: it takes an iterator of (B, d) batches. Every
size sees every batch (each batch is read once for all sizes), has its own Adam, and checkpoints to
its own ``state.pt``; a rerun resumes each size from its last checkpoint. Under torchrun the ranks
split each batch (data parallel, ``distributed.py``) or, with ``feature_parallel``, each dictionary's
features (``feature_parallel.py``); checkpoints hold the whole dictionary either way.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monosemantic.config import TrainConfig
from monosemantic.dictionary import sae_name, save_dictionary
from monosemantic.distributed import DistContext
from monosemantic.errors import UserError
from monosemantic.feature_parallel import FeatureShard
from monosemantic.fsio import append_jsonl, atomic_path, read_jsonl, write_text
from monosemantic.progress import Throughput, progress_bar
from monosemantic.resample import resample_dead, resample_steps
from monosemantic.sae import ARCHITECTURES, LossContext, SparseAutoencoder


def dead_window(cfg: TrainConfig, total_steps: int) -> int:
    """Tokens without firing after which a feature counts as dead while training (AuxK, resampling,
    the logged dead fraction): ``cfg.dead_window``, or 5% of the run capped at 10M tokens (Gao et
    al.'s window), so that short runs can revive features too."""
    if cfg.dead_window > 0:
        return cfg.dead_window
    return max(cfg.batch_size, min(10_000_000, total_steps * cfg.batch_size // 20))


# Settings that do not change what a checkpoint holds (the whole dictionary either way).
_NOT_CHECKPOINTED = ("feature_parallel",)


def lr_at(step: int, total: int, base: float, decay: float) -> float:
    """Constant, then linear decay to 0 over the final ``decay`` fraction of steps."""
    start = total * (1.0 - decay)
    return base if step < start else base * max(0.0, (total - step) / max(total - start, 1e-9))


def l1_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warm-up from 0 over the first ``warmup`` fraction of steps, then constant."""
    n = total * warmup
    return base if step >= n else base * step / n


def train_flops_per_token(d_model: int, n_features: int, arch: str = "relu", k: int = 0) -> int:
    """Training FLOPs per token, counting the matmuls (2 FLOPs per multiply-add; backward twice the
    forward): a dense SAE's encoder and decoder cost 2dn each forward, so 12·d·n in all; TopK and
    BatchTopK decode only k columns, so 6·d·n for the encoder plus 6·d·k for the decoder."""
    if arch in ("topk", "batchtopk"):
        return 6 * d_model * (n_features + min(k, n_features))
    return 12 * d_model * n_features


def variance_explained(x: Tensor, recon: Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over a batch (B, d)."""
    return 1.0 - ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


@dataclass
class SizeState:
    """One dictionary being trained: its module (or this rank's shard of it), optimizer, progress
    and folder."""

    sae: SparseAutoencoder | FeatureShard
    opt: torch.optim.Adam
    out_dir: Path
    step: int = 0
    since_fired: Tensor | None = None  # (n,) tokens since each feature (of this shard) last fired

    def checkpoint(self, cfg: dict[str, Any], write: bool = True) -> None:
        """Write state.pt, holding the whole dictionary. A feature shard gathers it first: every
        rank calls this, and only the one with ``write`` (rank 0) writes."""
        if isinstance(self.sae, FeatureShard):
            assert self.since_fired is not None
            sae, opt = self.sae.gather_state(), self.sae.gather_optimizer_state(self.opt)
            since_fired = self.sae.gather_features(self.since_fired)
        else:
            sae, opt, since_fired = self.sae.state_dict(), self.opt.state_dict(), self.since_fired
        if not write:
            return
        state = {"step": self.step, "sae": sae, "opt": opt, "since_fired": since_fired, "cfg": cfg}
        with atomic_path(self.out_dir / "state.pt") as tmp:
            torch.save(state, tmp)

    def restore(self, cfg: dict[str, Any]) -> None:
        """Resume from state.pt if there is one; a feature shard takes its slice of it."""
        path = self.out_dir / "state.pt"
        if not path.is_file():
            return
        shard = self.sae if isinstance(self.sae, FeatureShard) else None
        device = self.sae.local.W_dec.device if isinstance(self.sae, FeatureShard) else self.sae.W_dec.device
        try:
            # a shard slices on the CPU rather than holding the whole dictionary on its device
            state = torch.load(path, map_location="cpu" if shard else device, weights_only=True)
        except Exception as e:  # torch raises several types for a truncated or foreign file
            raise UserError(
                f"checkpoint {path} is corrupt ({type(e).__name__}): delete it to restart this size"
            ) from e
        if state.get("cfg") != cfg:
            raise UserError(
                f"checkpoint {path} was written with another configuration: delete it, or rerun with --force"
            )
        try:
            if shard is None:
                self.sae.load_state_dict(state["sae"])
                self.opt.load_state_dict(state["opt"])
                since_fired = state["since_fired"]
            else:
                shard.local.load_state_dict(shard.slice_state(state["sae"]))
                self.opt.load_state_dict(shard.slice_optimizer_state(state["opt"]))
                since_fired = shard.feature_slice(state["since_fired"]).to(device)
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            raise UserError(
                f"checkpoint {path} does not match a {self.sae.n_features}-feature dictionary: delete it"
            ) from e
        self.step, self.since_fired = int(state["step"]), since_fired


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so that an interrupt never lands in
    the middle of an optimizer update and the trainer can checkpoint before it stops."""
    flag: list[int] = []
    handler = lambda signum, _frame: flag.append(signum)  # noqa: E731
    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def train_step(
    st: SizeState, x: Tensor, cfg: TrainConfig, total: int, dist: DistContext | None = None
) -> dict[str, float]:
    """One Adam step on this rank's batch x (B, d); returns the batch's statistics (over all ranks).

    Data parallel (``dist`` with a whole dictionary): the gradients, buffers and firing records are
    synchronised. Feature parallel (a ``FeatureShard``): every rank has the whole batch, and the
    shard's loss is already global; the gradient norm and the statistics are reduced over ranks,
    while the firing records stay per shard."""
    lr, l1 = lr_at(st.step, total, cfg.lr, cfg.lr_decay), l1_at(st.step, total, cfg.l1_coeff, cfg.l1_warmup)
    assert st.since_fired is not None
    shard = st.sae if isinstance(st.sae, FeatureShard) else None
    data_parallel = dist if shard is None else None
    out = st.sae(x)
    window = dead_window(cfg, total)
    lo = st.sae.loss(x, out, LossContext(l1, dead=st.since_fired >= window))
    st.opt.zero_grad(set_to_none=True)
    lo.loss.backward()
    if data_parallel is not None:
        data_parallel.average_gradients(st.sae)
    st.sae.before_optimizer_step()
    if shard is None:
        torch.nn.utils.clip_grad_norm_(st.sae.parameters(), cfg.grad_clip)
    else:
        shard.clip_grad_norm_(cfg.grad_clip)
    for group in st.opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
    st.opt.step()
    with torch.no_grad():
        st.sae.after_optimizer_step(out)
        fired = (out.feats > 0).any(0)
        values = torch.stack(
            [
                lo.loss,
                lo.mse,
                lo.sparsity,
                lo.aux,
                (out.feats > 0).sum(-1).float().mean(),
                torch.tensor(variance_explained(x, out.recon), device=x.device),
            ]
        ).detach()
        if data_parallel is not None:
            data_parallel.average_buffers(st.sae)
            fired, values = data_parallel.any(fired), data_parallel.mean(values)
        st.since_fired += x.shape[0] * (data_parallel.world if data_parallel else 1)
        st.since_fired[fired] = 0
        counts = torch.stack([values[4], (st.since_fired >= window).sum().float()])
        if shard is not None:  # the loss terms are global already; counts over features are not
            counts = shard.sum_over_features(counts)
        loss, mse, sparsity, aux, _, ve = values.tolist()
        l0, n_dead = counts.tolist()
        stats = {
            "loss": loss,
            "mse": mse,
            "sparsity": sparsity,
            "aux": aux,
            "l0": l0,
            "variance_explained": ve,
            "lr": lr,
            "l1_coeff": l1,
            "dead_fraction": n_dead / st.sae.n_features,
        }
    st.step += 1
    if not math.isfinite(stats["loss"]):
        raise UserError(f"training diverged (loss {stats['loss']}) at step {st.step}: lower --lr")
    return stats


def build_sae(cfg: TrainConfig, d_model: int, n_features: int) -> SparseAutoencoder:
    """An untrained dictionary of ``cfg.arch``, given the config fields its constructor takes."""
    cls = ARCHITECTURES[cfg.arch]
    wanted = inspect.signature(cls.__init__).parameters
    return cls(d_model, n_features, **{k: v for k, v in asdict(cfg).items() if k in wanted and k != "self"})


def param_groups(module: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups, each with the multiplier ``lr_scale`` of the scheduled LR: JumpReLU's
    thresholds (``log_threshold``, also inside a feature shard) take ``cfg.threshold_lr_scale``."""
    # The thresholds come last in every module, so the groups keep named_parameters' order, which
    # FeatureShard relies on to map optimizer state indices to parameter names.
    named = list(module.named_parameters())
    thresholds = [p for name, p in named if name.endswith("log_threshold")]
    groups = [{"params": [p for name, p in named if not name.endswith("log_threshold")], "lr_scale": 1.0}]
    if thresholds:
        groups.append({"params": thresholds, "lr_scale": cfg.threshold_lr_scale})
    return groups


def make_states(
    cfg: TrainConfig, d_model: int, run_dir: Path, device: str, dist: DistContext | None = None
) -> list[SizeState]:
    """A fresh state per size; with ``cfg.feature_parallel`` under ``dist``, this rank's shards
    (initialised whole on the CPU, identically on every rank, then sliced)."""
    states = []
    for n in cfg.sizes:
        sae = build_sae(cfg, d_model, n)
        sae.initialize(torch.Generator().manual_seed(cfg.seed * 7919 + n), cfg.dec_init_norm)
        module = FeatureShard.from_full(sae, dist) if cfg.feature_parallel and dist else sae
        module.to(device)
        n_mine = module.n_local if isinstance(module, FeatureShard) else n
        opt = torch.optim.Adam(param_groups(module, cfg), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
        states.append(
            SizeState(
                module,
                opt,
                run_dir / "saes" / sae_name(cfg.arch, n),
                since_fired=torch.zeros(n_mine, dtype=torch.long, device=device),
            )
        )
    return states


def whole_dictionary(st: SizeState, cfg: TrainConfig) -> SparseAutoencoder | None:
    """The dictionary being trained, whole: a feature shard gathers it onto rank 0 (every rank must
    call this; the others get None)."""
    if not isinstance(st.sae, FeatureShard):
        return st.sae
    state = st.sae.gather_state()
    if state is None:
        return None
    sae = build_sae(cfg, st.sae.d_model, st.sae.n_features)
    sae.load_state_dict(state)
    return sae


def train(
    cfg: TrainConfig,
    batches_from: Callable[[int], Iterator[Tensor]],
    *,
    run_dir: Path,
    d_model: int,
    n_train_tokens: int,
    scale: float,
    meta: dict[str, Any],
    device: str = "cpu",
    dist: DistContext | None = None,
    on_log: Callable[[str, dict[str, Any]], None] | None = None,
) -> tuple[list[SizeState], Throughput]:
    """Train every size in ``cfg.sizes`` to ``epochs · n_train_tokens / batch_size`` steps.

    ``batches_from(step)`` yields the global (B, d) batches from ``step`` on (the same batches
    whether or not the run was interrupted); under ``dist`` each rank trains on its slice of each,
    or with ``cfg.feature_parallel`` on the whole batch with its slice of the features, and only
    rank 0 writes. ``meta`` (model, layer, ...) goes into each cfg.json. ``on_log(name, row)`` is
    called on rank 0 with each row written to a dictionary's log.jsonl (experiment tracking)."""
    main = dist is None or dist.is_main
    feature_parallel = cfg.feature_parallel and dist is not None
    total = max(1, int(cfg.epochs * n_train_tokens) // cfg.batch_size)
    ckpt_cfg = {k: v for k, v in asdict(cfg).items() if k not in _NOT_CHECKPOINTED}
    ckpt_cfg |= {"sizes": list(cfg.sizes), "device": None, "n_steps": total}
    states = make_states(cfg, d_model, run_dir, device, dist)
    for st in states:
        st.restore(ckpt_cfg)
        if main:
            st.out_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(st.out_dir / "log.jsonl", st.step)
    step = min(st.step for st in states)
    batches = batches_from(step)
    resample_at = resample_steps(total)
    meter = Throughput(
        flops_per_item=sum(train_flops_per_token(d_model, n, cfg.arch, cfg.k) for n in cfg.sizes)
    )
    stats: dict[str, float] = {"l0": math.nan, "variance_explained": math.nan}
    with progress_bar("tok", disable=not main) as bar, deferred_interrupt() as interrupted:
        task = bar.add_task(
            "train " + "/".join(map(str, cfg.sizes)),
            total=total * cfg.batch_size,
            completed=step * cfg.batch_size,
            info="",
        )
        while step < total and not _stop(interrupted, dist):
            batch = next(batches)
            x = (dist.shard(batch) if dist and not feature_parallel else batch).to(device, non_blocking=True)
            # the global batch's mean, identical on every rank: fresh sizes start centred on it
            mean = batch.to(device).float().mean(0) if step == 0 and cfg.b_dec_init == "mean" else None
            for st in states:
                if st.step != step:
                    continue  # this size is ahead of the slowest one after a resume
                if mean is not None:
                    st.sae.center_on(mean)
                if cfg.resample_dead and step in resample_at:
                    # Every rank resamples identically: the global batch and a (seed, step) generator.
                    assert st.since_fired is not None
                    assert not isinstance(st.sae, FeatureShard)  # TrainConfig refuses the pair
                    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                    dead = st.since_fired >= dead_window(cfg, total)
                    stats_resampled = resample_dead(st.sae, st.opt, dead, batch.to(device), g)
                    if main and stats_resampled:
                        append_jsonl(
                            st.out_dir / "log.jsonl", {"step": st.step, "resampled": stats_resampled}
                        )
                stats = train_step(st, x, cfg, total, dist)
                if main and (st.step % cfg.log_every == 0 or st.step == total):
                    row = {
                        "step": st.step,
                        "tokens": st.step * cfg.batch_size,
                        **stats,
                        "dead_window": dead_window(cfg, total),  # what dead_fraction counts over
                        "tokens_per_s": round(meter.rate, 1),
                    }
                    append_jsonl(st.out_dir / "log.jsonl", row)
                    if on_log is not None:
                        on_log(st.out_dir.name, row)
                if st.step % cfg.checkpoint_every == 0 or st.step == total:
                    st.checkpoint(ckpt_cfg, write=main)
            step += 1
            meter.add(cfg.batch_size)
            bar.update(
                task,
                advance=cfg.batch_size,
                info=f"L0 {stats['l0']:.0f} VE {stats['variance_explained']:.2f}",
            )
        if step < total:  # interrupted
            for st in states:
                st.checkpoint(ckpt_cfg, write=main)
            raise KeyboardInterrupt
    for st in states:
        whole = whole_dictionary(st, cfg)
        if whole is not None and main and (meter.count or not (st.out_dir / "sae.safetensors").is_file()):
            flops = train_flops_per_token(d_model, st.sae.n_features, cfg.arch, cfg.k)
            save_dictionary(
                whole,
                st.out_dir,
                {**meta, **ckpt_cfg, "train_flops_per_token": flops, "train": meter.as_dict()},
                scale,
            )
    return states, meter


def _stop(interrupted: list[int], dist: DistContext | None) -> bool:
    """Whether any rank was interrupted: all ranks must leave the loop at the same step."""
    if dist is None:
        return bool(interrupted)
    return bool(dist.any(torch.tensor([bool(interrupted)])).item())


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    rows = read_jsonl(path)
    kept = [r for r in rows if r.get("step", 0) <= step]
    if len(kept) != len(rows) or (path.exists() and path.read_text().count("\n") != len(rows)):
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
