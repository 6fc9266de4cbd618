"""Where a training step's time goes: torch.profiler over ``train.train_step`` for one architecture
and size, on random unit-scale activations (d = 576, as SmolLM2-135M's residual stream).

    OMP_NUM_THREADS=1 python bench/profile_step.py --arch topk --n 16384 [--steps 5] [--dead 0.3]

Prints the operators by self CPU time (the top ``--rows``) and the mean wall ms per step."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from monosemantic.config import TrainConfig
from monosemantic.train import make_states, train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dead", type=float, default=0.3, help="fraction of latents marked dead (AuxK)")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    cfg = TrainConfig(arch=args.arch, sizes=[args.n], batch_size=args.batch, dead_window=args.batch)
    st = make_states(cfg, args.d, Path(tempfile.mkdtemp()), "cpu")[0]
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(args.batch, args.d, generator=g) for _ in range(args.steps + 2)]
    assert st.since_fired is not None
    total = 10_000

    def step(x: torch.Tensor) -> None:
        # the same latents stay dead every step, so that AuxK runs as it does early in training
        st.since_fired.zero_()
        st.since_fired[: int(args.dead * args.n)] = 10 * args.batch
        train_step(st, x, cfg, total)

    for x in xs[:2]:
        step(x)
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for x in xs[2:]:
            step(x)
    ms = (time.perf_counter() - t0) / args.steps * 1e3
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    threads = torch.get_num_threads()
    print(f"{args.arch} n={args.n} B={args.batch} threads={threads}: {ms:.1f} ms/step (profiled)")


if __name__ == "__main__":
    main()
