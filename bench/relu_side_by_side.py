"""Our ReLU training step next to SAELens's standard one (and a bare PyTorch loop of the same
math), in one process, on the same batches, interleaved step by step so that all of them see the
same machine load. Run it from the peers' environment with this checkout first on the path::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-peers/bin/python bench/relu_side_by_side.py --n 16384

Prints the median wall and CPU ms per step of each and the ratios SAELens / ours; ``--profile``
adds torch.profiler's operator table of each (self CPU time)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from monosemantic.config import TrainConfig
from monosemantic.sae import ReluSAE
from monosemantic.train import make_states, train_step


def ours(n: int, d: int, batch: int, steps: int, fast: bool) -> Callable[[Tensor], object]:
    cfg = TrainConfig(arch="relu", sizes=[n], batch_size=batch, l1_coeff=1.0, lr=3e-3, l1_warmup=0.05)
    (st,) = make_states(cfg, d, Path(tempfile.mkdtemp()), "cpu")

    def step(x: Tensor) -> object:
        ReluSAE.fast = fast
        return train_step(st, x, cfg, steps)

    return step


def saelens(n: int, d: int, batch: int, steps: int) -> Callable[[Tensor], object]:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=d,
            d_sae=n,
            l1_coefficient=1.0,
            l1_warm_up_steps=round(0.05 * steps),
            apply_b_dec_to_input=False,
            decoder_init_norm=0.1,
        )
    )
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=3e-3,
        lr_end=3e-3,
        lr_scheduler_name="constant",
        lr_decay_steps=round(0.2 * steps),
        device="cpu",
        dead_feature_window=1000,
        feature_sampling_window=steps + 1,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x: Tensor) -> object:
        out = trainer.step(x)
        trainer.n_training_steps += 1
        return out

    return step


def bare(n: int, d: int) -> Callable[[Tensor], object]:
    """The same math as plainly as PyTorch writes it: five matmuls, the norm-weighted L1, clipping
    and fused Adam, no bookkeeping."""
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d, n, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=0) * 0.1).requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()
    b_enc, b_dec = torch.zeros(n, requires_grad=True), torch.zeros(d, requires_grad=True)
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=3e-3, fused=True)

    def step(x: Tensor) -> object:
        f = torch.relu(torch.addmm(b_enc, x, W_enc.T))
        recon = torch.addmm(b_dec, f, W_dec.T)
        loss = (recon - x).pow(2).sum(-1).mean() + (f @ W_dec.norm(dim=0)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each (after 2 untimed)")
    ap.add_argument("--trainers", default="ours,ours-plain,saelens,bare")
    ap.add_argument(
        "--run-dir", help="take the batches from this run's activation store (normalised) instead of randn"
    )
    ap.add_argument("--skip", type=int, default=0, help="untimed steps of each first (a trained state)")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's table of each")
    args = ap.parse_args()
    total = args.skip + args.steps + 2
    builders: dict[str, Callable[[], Callable[[Tensor], object]]] = {
        "ours": lambda: ours(args.n, args.d, args.batch, total, True),
        "ours-plain": lambda: ours(args.n, args.d, args.batch, total, False),
        "saelens": lambda: saelens(args.n, args.d, args.batch, total),
        "bare": lambda: bare(args.n, args.d),
    }
    names = [t for t in args.trainers.split(",") if t]
    steps = {name: builders[name]() for name in names}
    if args.run_dir:
        from monosemantic.activations import ActivationStore

        store = ActivationStore(Path(args.run_dir))
        it = store.batches(args.batch, 0, 16)
        xs = [next(it) for _ in range(total)]
        del it
    else:
        g = torch.Generator().manual_seed(0)
        xs = [torch.randn(args.batch, args.d, generator=g) for _ in range(total)]
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i, x in enumerate(xs):
        order = names if i % 2 == 0 else names[::-1]  # alternate who goes first
        for name in order:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[name](x)
            if i >= 2 + args.skip:
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    med = {
        name: (statistics.median(t for t, _ in ts) * 1e3, statistics.median(c for _, c in ts) * 1e3)
        for name, ts in times.items()
    }
    print(
        f"n={args.n} d={args.d} B={args.batch} threads={torch.get_num_threads()} steps={args.steps} "
        f"after {args.skip + 2} untimed, data: {args.run_dir or 'randn'}"
    )
    for name, (wall, cpu) in med.items():
        print(f"  {name:12s} {wall:7.1f} ms/step wall  {cpu:7.1f} ms CPU")
    if "saelens" in med:
        for name in names:
            if name != "saelens":
                w, c = med["saelens"][0] / med[name][0], med["saelens"][1] / med[name][1]
                print(f"  saelens / {name}: {w:.2f}x wall, {c:.2f}x CPU")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in names:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for x in xs[:3]:
                    steps[name](x)
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


if __name__ == "__main__":
    main()
