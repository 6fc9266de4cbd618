"""Train several dictionary sizes together from one stream of activation batches.

The trainer knows nothing about the language model: it takes an iterator of (B, d) batches. Every
size sees every batch (each batch is read once for all sizes), has its own Adam, and checkpoints to
its own ``state.pt``; a rerun resumes each size from its last checkpoint.
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
from monosemantic.fsio import append_jsonl, atomic_path, read_jsonl, write_text
from monosemantic.progress import Throughput, progress_bar
from monosemantic.resample import resample_dead, resample_steps
from monosemantic.sae import ARCHITECTURES, LossContext, SparseAutoencoder

# A feature is logged as dead during training once it has not fired for this many tokens.
DEAD_WINDOW_TOKENS = 100_000


def lr_at(step: int, total: int, base: float, decay: float) -> float:
    """Constant, then linear decay to 0 over the final ``decay`` fraction of steps."""
    start = total * (1.0 - decay)
    return base if step < start else base * max(0.0, (total - step) / max(total - start, 1e-9))


def l1_at(step: int, total: int, base: float, warmup: float) -> float:
    """Linear warm-up from 0 over the first ``warmup`` fraction of steps, then constant."""
    n = total * warmup
    return base if step >= n else base * step / n


def train_flops_per_token(d_model: int, n_features: int) -> int:
    """Dense SAE training cost: encoder and decoder matmuls of 2dn each forward, twice that backward."""
    return 12 * d_model * n_features


def variance_explained(x: Tensor, recon: Tensor) -> float:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over a batch (B, d)."""
    return 1.0 - ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


@dataclass
class SizeState:
    """One dictionary being trained: its module, optimizer, progress and folder."""

    sae: SparseAutoencoder
    opt: torch.optim.Adam
    out_dir: Path
    step: int = 0
    since_fired: Tensor | None = None  # (n,) tokens since each feature last fired

    def checkpoint(self, cfg: dict[str, Any]) -> None:
        state = {
            "step": self.step,
            "sae": self.sae.state_dict(),
            "opt": self.opt.state_dict(),
            "since_fired": self.since_fired,
            "cfg": cfg,
        }
        with atomic_path(self.out_dir / "state.pt") as tmp:
            torch.save(state, tmp)

    def restore(self, cfg: dict[str, Any]) -> None:
        path = self.out_dir / "state.pt"
        if not path.is_file():
            return
        try:
            state = torch.load(path, map_location=self.sae.W_dec.device, weights_only=True)
        except Exception as e:  # torch raises several types for a truncated or foreign file
            raise UserError(
                f"checkpoint {path} is corrupt ({type(e).__name__}): delete it to restart this size"
            ) from e
        if state.get("cfg") != cfg:
            raise UserError(
                f"checkpoint {path} was written with another configuration: delete it, or rerun with --force"
            )
        try:
            self.sae.load_state_dict(state["sae"])
            self.opt.load_state_dict(state["opt"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(
                f"checkpoint {path} does not match a {self.sae.n_features}-feature dictionary: delete it"
            ) from e
        self.step, self.since_fired = int(state["step"]), state["since_fired"]


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
    """One Adam step on this rank's batch x (B, d); returns the batch's statistics (averaged over
    ranks). Under data parallelism the gradients, buffers and firing records are synchronised."""
    lr, l1 = lr_at(st.step, total, cfg.lr, cfg.lr_decay), l1_at(st.step, total, cfg.l1_coeff, cfg.l1_warmup)
    assert st.since_fired is not None
    out = st.sae(x)
    lo = st.sae.loss(x, out, LossContext(l1, dead=st.since_fired >= DEAD_WINDOW_TOKENS))
    st.opt.zero_grad(set_to_none=True)
    lo.loss.backward()
    if dist is not None:
        dist.average_gradients(st.sae)
    st.sae.before_optimizer_step()
    torch.nn.utils.clip_grad_norm_(st.sae.parameters(), cfg.grad_clip)
    for group in st.opt.param_groups:
        group["lr"] = lr
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
        if dist is not None:
            dist.average_buffers(st.sae)
            fired, values = dist.any(fired), dist.mean(values)
        st.since_fired += x.shape[0] * (dist.world if dist else 1)
        st.since_fired[fired] = 0
        loss, mse, sparsity, aux, l0, ve = values.tolist()
        stats = {
            "loss": loss,
            "mse": mse,
            "sparsity": sparsity,
            "aux": aux,
            "l0": l0,
            "variance_explained": ve,
            "lr": lr,
            "l1_coeff": l1,
            "dead_fraction": (st.since_fired >= DEAD_WINDOW_TOKENS).float().mean().item(),
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


def make_states(cfg: TrainConfig, d_model: int, run_dir: Path, device: str) -> list[SizeState]:
    states = []
    for n in cfg.sizes:
        sae = build_sae(cfg, d_model, n)
        sae.initialize(torch.Generator().manual_seed(cfg.seed * 7919 + n), cfg.dec_init_norm)
        sae.to(device)
        opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), weight_decay=0.0)
        states.append(
            SizeState(
                sae,
                opt,
                run_dir / "saes" / sae_name(cfg.arch, n),
                since_fired=torch.zeros(n, dtype=torch.long, device=device),
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
) -> tuple[list[SizeState], Throughput]:
    """Train every size in ``cfg.sizes`` to ``epochs · n_train_tokens / batch_size`` steps.

    ``batches_from(step)`` yields the global (B, d) batches from ``step`` on (the same batches
    whether or not the run was interrupted); under ``dist`` each rank trains on its slice of each
    and only rank 0 writes. ``meta`` (model, layer, ...) goes into each cfg.json."""
    main = dist is None or dist.is_main
    total = max(1, int(cfg.epochs * n_train_tokens) // cfg.batch_size)
    ckpt_cfg = {**asdict(cfg), "sizes": list(cfg.sizes), "device": None, "n_steps": total}
    states = make_states(cfg, d_model, run_dir, device)
    for st in states:
        st.restore(ckpt_cfg)
        if main:
            st.out_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(st.out_dir / "log.jsonl", st.step)
    step = min(st.step for st in states)
    batches = batches_from(step)
    resample_at = resample_steps(total)
    meter = Throughput(flops_per_item=sum(train_flops_per_token(d_model, n) for n in cfg.sizes))
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
            x = (dist.shard(batch) if dist else batch).to(device, non_blocking=True)
            for st in states:
                if st.step != step:
                    continue  # this size is ahead of the slowest one after a resume
                if cfg.resample_dead and step in resample_at:
                    # Every rank resamples identically: the global batch and a (seed, step) generator.
                    assert st.since_fired is not None
                    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                    dead = st.since_fired >= DEAD_WINDOW_TOKENS
                    stats_resampled = resample_dead(st.sae, st.opt, dead, batch.to(device), g)
                    if main and stats_resampled:
                        append_jsonl(
                            st.out_dir / "log.jsonl", {"step": st.step, "resampled": stats_resampled}
                        )
                stats = train_step(st, x, cfg, total, dist)
                if not main:
                    continue
                if st.step % cfg.log_every == 0 or st.step == total:
                    append_jsonl(
                        st.out_dir / "log.jsonl",
                        {
                            "step": st.step,
                            "tokens": st.step * cfg.batch_size,
                            **stats,
                            "tokens_per_s": round(meter.rate, 1),
                        },
                    )
                if st.step % cfg.checkpoint_every == 0 or st.step == total:
                    st.checkpoint(ckpt_cfg)
            step += 1
            meter.add(cfg.batch_size)
            bar.update(
                task,
                advance=cfg.batch_size,
                info=f"L0 {stats['l0']:.0f} VE {stats['variance_explained']:.2f}",
            )
        if step < total:  # interrupted
            for st in states:
                if main:
                    st.checkpoint(ckpt_cfg)
            raise KeyboardInterrupt
    for st in states:
        if main and (meter.count or not (st.out_dir / "sae.safetensors").is_file()):
            flops = train_flops_per_token(d_model, st.sae.n_features)
            save_dictionary(
                st.sae,
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
