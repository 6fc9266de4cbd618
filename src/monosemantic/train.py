"""Train several dictionary sizes together from one stream of activation batches.

The trainer knows nothing about the language model: it takes an iterator of (B, d) batches. Every
size sees every batch (each batch is read once for all sizes), has its own Adam, and checkpoints to
its own ``state.pt``; a rerun resumes each size from its last checkpoint. Under torchrun the ranks
split each batch (data parallel, ``distributed.Whole``) or, with ``feature_parallel``, each
dictionary's features (``feature_parallel.FeatureShard``); the training step sees either through the
one ``distributed.Layout`` interface, and checkpoints hold the whole dictionary either way.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monosemantic.config import TrainConfig, same_setting
from monosemantic.dictionary import dictionary_saved, sae_name, save_dictionary
from monosemantic.distributed import DistContext, Layout, Whole
from monosemantic.errors import UserError
from monosemantic.feature_parallel import FeatureShard
from monosemantic.fsio import append_jsonl, atomic_path, read_jsonl, write_text
from monosemantic.integrity import load_checkpoint, write_checkpoint
from monosemantic.memory import keep_freed_memory
from monosemantic.progress import Throughput, progress_bar
from monosemantic.resample import resample_dead, resample_steps
from monosemantic.sae import ARCHITECTURES, ForwardOutput, LossContext, SparseAutoencoder


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
    BatchTopK decode only k columns, so 6·d·n for the encoder plus 6·d·k for the decoder (Matryoshka
    counted alike: its prefixes' decoders re-read the same k columns). A nominal count, the compute
    axis of the scaling laws: ReLU's sparse step (``sae/relu_step.py``) does less work once L0 is
    below 0.2·n, so its GFLOP/s by this count can exceed the machine's matmul peak."""
    if arch in ("topk", "batchtopk", "matryoshka"):
        return 6 * d_model * (n_features + min(k, n_features))
    return 12 * d_model * n_features


def variance_explained(x: Tensor, recon: Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over a batch (B, d)."""
    return 1.0 - ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def firing(out: ForwardOutput, batch: int) -> tuple[Tensor, Tensor]:
    """(n,) bool: which features fired on the batch, and () the mean active features per token;
    from the active entries where the architecture lists them (a pass over M entries rather
    than two over the dense (B, n) features)."""
    if out.active is not None:
        on = (out.active.values > 0).float()
        n = out.feats.shape[-1]
        return on.new_zeros(n).index_add_(0, out.active.cols, on) > 0, on.sum() / batch
    # f ≥ 0: a feature fired iff its maximum is > 0, and sign(f) counts the nonzeros (0.1 ms against
    # 0.6 for a (B, n) bool matrix reduced twice at 512 x 2,048)
    flat = out.feats.reshape(-1, out.feats.shape[-1])
    return flat.amax(0) > 0, torch.sign(flat).sum(dtype=torch.float32) / batch


@dataclass
class SizeState:
    """One dictionary being trained: its layout (the module, whole or this rank's slice of its
    features), optimizer, progress and folder."""

    layout: Layout
    opt: torch.optim.Adam
    out_dir: Path
    step: int = 0
    since_fired: Tensor | None = None  # (n_local,) tokens since each feature (of this slice) last fired

    @property
    def sae(self) -> SparseAutoencoder:
        """The module this process trains (the whole dictionary unless feature parallel)."""
        return self.layout.sae

    def checkpoint(self, cfg: dict[str, Any], write: bool = True) -> None:
        """Write state.pt, holding the whole dictionary (a feature shard gathers it first): every
        rank calls this, and only the one with ``write`` (rank 0) writes."""
        assert self.since_fired is not None
        whole = self.layout.gather(self.opt, self.since_fired)
        if not write or whole is None:
            return
        sae, opt, since_fired = whole
        state = {"step": self.step, "sae": sae, "opt": opt, "since_fired": since_fired, "cfg": cfg}
        with atomic_path(self.out_dir / "state.pt") as tmp:
            write_checkpoint(tmp, state)

    def restore(self, cfg: dict[str, Any]) -> None:
        """Resume from state.pt if there is one; a feature shard takes its slice of it."""
        path = self.out_dir / "state.pt"
        if not path.is_file():
            return
        state = load_checkpoint(path, self.layout.checkpoint_device, "delete it to restart this size")
        old = state.get("cfg") or {}
        if any(not same_setting(k, old.get(k), cfg.get(k), cfg.get("arch")) for k in {*old, *cfg}):
            raise UserError(
                f"checkpoint {path} was written with another configuration: delete it, or rerun with --force"
            )
        try:
            since_fired = self.layout.load(state["sae"], state["opt"], state["since_fired"], self.opt)
        except (RuntimeError, ValueError, KeyError, IndexError) as e:
            raise UserError(
                f"checkpoint {path} does not match a {self.layout.n_features}-feature dictionary: delete it"
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


def train_step(st: SizeState, x: Tensor, cfg: TrainConfig, total: int) -> dict[str, float]:
    """One Adam step on this process's batch x (B, d) (``st.layout.local_batch`` of the global
    batch); returns the batch's statistics (over all ranks).

    Data parallel (``distributed.Whole`` under torchrun): the layout synchronises the gradients,
    buffers and firing records. Feature parallel (``feature_parallel.FeatureShard``): every rank has
    the whole batch and the module's loss is already global; the layout reduces the gradient norm
    and the counts over features, while the firing records stay per slice."""
    lr, l1 = lr_at(st.step, total, cfg.lr, cfg.lr_decay), l1_at(st.step, total, cfg.l1_coeff, cfg.l1_warmup)
    assert st.since_fired is not None
    sae, layout = st.sae, st.layout
    out = sae(x)
    window = dead_window(cfg, total)
    lo = sae.loss(x, out, LossContext(l1, dead=st.since_fired >= window))
    st.opt.zero_grad(set_to_none=True)
    lo.loss.backward()
    layout.sync_gradients()
    sae.before_optimizer_step()
    layout.clip_grad_norm_(cfg.grad_clip)
    for group in st.opt.param_groups:
        group["lr"] = lr * group["lr_scale"]
    st.opt.step()
    with torch.no_grad():
        sae.after_optimizer_step(out)
        fired, l0 = firing(out, x.shape[0])
        ve = 1.0 - (x - out.recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()  # a tensor: no host sync
        values = torch.stack([lo.loss, lo.mse, lo.sparsity, lo.aux, l0, ve]).detach()
        fired, values, tokens = layout.sync_step(fired, values, x.shape[0])
        st.since_fired += tokens
        st.since_fired[fired] = 0
        # the loss terms are global already; counts over features are not
        counts = layout.sum_over_features(torch.stack([values[4], (st.since_fired >= window).sum().float()]))
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
            "dead_fraction": n_dead / layout.n_features,
        }
    st.step += 1
    if not math.isfinite(stats["loss"]):
        raise UserError(f"training diverged (loss {stats['loss']}) at step {st.step}: lower --lr")
    return stats


def build_sae(cfg: TrainConfig, d_model: int, n_features: int) -> SparseAutoencoder:
    """An untrained dictionary of ``cfg.arch`` with the settings its ``from_config`` reads."""
    sae = ARCHITECTURES[cfg.arch].from_config(d_model, n_features, cfg)
    sae.configure(cfg)
    return sae


def param_groups(module: torch.nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups, each with the multiplier ``lr_scale`` of the scheduled LR: JumpReLU's
    thresholds (``log_threshold``) take ``cfg.threshold_lr_scale``."""
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
    if torch.device(device).type == "cpu":
        keep_freed_memory()  # reuse the step's large temporaries instead of page-faulting them in anew
    states = []
    for n in ARCHITECTURES[cfg.arch].trained_sizes(cfg.sizes):
        sae = build_sae(cfg, d_model, n)
        generator = torch.Generator().manual_seed(cfg.seed * 7919 + n)
        sae.initialize(generator, cfg.dec_init_norm, cfg.enc_init_norm)
        layout = FeatureShard.from_full(sae, dist) if cfg.feature_parallel and dist else Whole(sae, dist)
        layout.sae.configure(cfg)  # a shard is a module of its own
        layout.sae.to(device)
        # fused: one pass over each parameter instead of ~10 (11 vs 72 ms per step for a 16,384 x 576
        # dictionary on this CPU), the same update to rounding
        fused = torch.device(device).type in ("cpu", "cuda")
        opt = torch.optim.Adam(
            param_groups(layout.sae, cfg), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0, fused=fused
        )
        states.append(
            SizeState(
                layout,
                opt,
                run_dir / "saes" / sae_name(cfg.arch, n),
                since_fired=torch.zeros(layout.n_local, dtype=torch.long, device=device),
            )
        )
    return states


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
    total = max(1, int(cfg.epochs * n_train_tokens) // cfg.batch_size)
    ckpt_cfg = {k: v for k, v in asdict(cfg).items() if k not in _NOT_CHECKPOINTED}
    ckpt_cfg |= {"sizes": list(cfg.sizes), "device": None, "n_steps": total}
    states = make_states(cfg, d_model, run_dir, device, dist)
    trained = [st.layout.n_features for st in states]
    for st in states:
        st.restore(ckpt_cfg)
        if main:
            st.out_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(st.out_dir / "log.jsonl", st.step)
    step = min(st.step for st in states)
    batches = batches_from(step)
    resample_at = resample_steps(total)
    meter = Throughput(
        flops_per_item=sum(train_flops_per_token(d_model, n, cfg.arch, cfg.k) for n in trained)
    )
    stats: dict[str, float] = {"l0": math.nan, "variance_explained": math.nan}
    # nothing left to train (a rerun of a finished run): no bar, only the stage's "is trained" line
    nothing_left = step >= total
    with progress_bar("tok", disable=not main or nothing_left) as bar, deferred_interrupt() as interrupted:
        task = bar.add_task(
            "train " + "/".join(map(str, trained)),
            total=total * cfg.batch_size,
            completed=step * cfg.batch_size,
            info="",
        )
        shown = ""
        while step < total and not _stop(interrupted, dist):
            batch = next(batches)
            # every size is laid out alike: the first says which rows this process trains on
            x = states[0].layout.local_batch(batch).to(device, non_blocking=True)
            # the global batch's mean, identical on every rank: fresh sizes start centred on it
            mean = batch.to(device).float().mean(0) if step == 0 and cfg.b_dec_init == "mean" else None
            for st in states:
                if st.step != step:
                    continue  # this size is ahead of the slowest one after a resume
                if mean is not None:
                    st.sae.center_on(mean)
                if cfg.resample_dead and step in resample_at:
                    # Every rank resamples identically: the global batch and a (seed, step) generator.
                    # (A whole dictionary: TrainConfig refuses resampling with feature parallelism.)
                    assert st.since_fired is not None
                    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                    dead = st.since_fired >= dead_window(cfg, total)
                    stats_resampled = resample_dead(st.sae, st.opt, dead, batch.to(device), g)
                    if main and stats_resampled:
                        append_jsonl(
                            st.out_dir / "log.jsonl", {"step": st.step, "resampled": stats_resampled}
                        )
                stats = train_step(st, x, cfg, total)
                # the training batch's figures (evaluate measures held-out ones), of the size named
                shown = f"{st.out_dir.name}: L0 {stats['l0']:.0f}, batch VE {stats['variance_explained']:.2f}"
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
                info=shown,
            )
        if step < total:  # interrupted
            for st in states:
                st.checkpoint(ckpt_cfg, write=main)
            raise KeyboardInterrupt
    for st in states:
        whole = st.layout.whole()
        if whole is not None and main and (meter.count or not dictionary_saved(st.out_dir)):
            flops = train_flops_per_token(d_model, whole.n_features, cfg.arch, cfg.k)
            # a Matryoshka dictionary also saves its prefixes, each as a dictionary of its own
            for n, view in whole.views(cfg.sizes).items():
                save_dictionary(
                    view,
                    run_dir / "saes" / sae_name(cfg.arch, n),
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
