"""Interleaved A/B timing of the TopK training step: the fast path against the plain autograd
reference (``TopKSAE.fast``), alternating step by step so that both see the same machine load.

    OMP_NUM_THREADS=1 python bench/ab_step.py --arch topk --n 2048 --steps 10

Prints the median wall and CPU ms per step of each."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from monosemantic.config import TrainConfig
from monosemantic.sae import TopKSAE
from monosemantic.train import make_states, train_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dead", type=float, default=0.3, help="fraction of latents marked dead (AuxK)")
    args = ap.parse_args()
    cfg = TrainConfig(arch=args.arch, sizes=[args.n], batch_size=args.batch, dead_window=args.batch)
    states = {fast: make_states(cfg, args.d, Path(tempfile.mkdtemp()), "cpu")[0] for fast in (True, False)}
    g = torch.Generator().manual_seed(0)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for i in range(args.steps + 2):
        x = torch.randn(args.batch, args.d, generator=g)
        for fast, st in states.items():
            TopKSAE.fast = fast
            assert st.since_fired is not None
            st.since_fired.zero_()
            st.since_fired[: int(args.dead * args.n)] = 10 * args.batch
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(st, x, cfg, 10_000)
            if i >= 2:
                times[fast].append((time.perf_counter() - t0, time.process_time() - c0))
    for fast, ts in times.items():
        wall = statistics.median(t for t, _ in ts) * 1e3
        cpu = statistics.median(c for _, c in ts) * 1e3
        print(
            f"{args.arch} n={args.n} {'fast' if fast else 'plain'}: {wall:.0f} ms/step wall, {cpu:.0f} ms CPU"
        )


if __name__ == "__main__":
    main()
