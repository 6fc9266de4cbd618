"""Interleaved A/B timing of the TopK training step: the fast path against the plain autograd
reference (``TopKSAE.fast``), and AuxK's dense layout over the dead columns against its sparse one
(``TopKSAE.aux_dense_above``), alternating step by step so that all see the same machine load.

    OMP_NUM_THREADS=1 python bench/ab_step.py --arch topk --n 2048 --steps 10 \
        [--variants fast-dense-aux,fast-sparse-aux,plain]

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

VARIANTS = {  # (TopKSAE.fast, TopKSAE.aux_dense_above)
    "fast": (True, TopKSAE.aux_dense_above),
    "fast-dense-aux": (True, 0.0),
    "fast-sparse-aux": (True, float("inf")),
    "plain": (False, TopKSAE.aux_dense_above),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--dead", type=float, default=0.3, help="fraction of latents marked dead (AuxK)")
    ap.add_argument("--variants", default="fast,plain", help=f"from {', '.join(VARIANTS)}")
    args = ap.parse_args()
    cfg = TrainConfig(arch=args.arch, sizes=[args.n], batch_size=args.batch, dead_window=args.batch)
    names = args.variants.split(",")
    states = {name: make_states(cfg, args.d, Path(tempfile.mkdtemp()), "cpu")[0] for name in names}
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i in range(args.steps + 2):
        x = torch.randn(args.batch, args.d, generator=g)
        for name, st in states.items():
            TopKSAE.fast, TopKSAE.aux_dense_above = VARIANTS[name]
            assert st.since_fired is not None
            st.since_fired.zero_()
            st.since_fired[: int(args.dead * args.n)] = 10 * args.batch
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(st, x, cfg, 10_000)
            if i >= 2:
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    for name, ts in times.items():
        wall = statistics.median(t for t, _ in ts) * 1e3
        cpu = statistics.median(c for _, c in ts) * 1e3
        print(f"{args.arch} n={args.n} {name}: {wall:.0f} ms/step wall, {cpu:.0f} ms CPU")


if __name__ == "__main__":
    main()
