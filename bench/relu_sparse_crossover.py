"""Where the ReLU step's sparse (CSR) products start to pay: two copies of one dictionary trained
side by side on the same batches of a run's store, one always dense (``sparse_below=0``), one always
sparse (``sparse_below=2``), each step timed for both with the batch's density of nonzero
activations. Run it from this checkout::

    OMP_NUM_THREADS=2 PYTHONPATH=src .venv/bin/python bench/relu_sparse_crossover.py \\
        --run-dir runs/demo --n 2048 --steps 80

Prints, per density band, the median wall ms of each step and their ratio; ``relu_step.SPARSE_BELOW``
is set from this table (the densities where sparse is clearly faster)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from monosemantic.activations import ActivationStore
from monosemantic.config import TrainConfig
from monosemantic.sae import ReluSAE
from monosemantic.train import make_states, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--l1-coeff", type=float, default=1.0)
    args = ap.parse_args()
    store = ActivationStore(Path(args.run_dir))
    it = store.batches(args.batch, 0, 16)
    xs = [next(it) for _ in range(args.steps)]
    cfg = TrainConfig(
        arch="relu", sizes=[args.n], l1_coeff=args.l1_coeff, lr=3e-3, batch_size=args.batch, device="cpu"
    )
    states = [make_states(cfg, store.d_model, Path(tempfile.mkdtemp()), "cpu")[0] for _ in range(2)]
    for st in states:
        with torch.no_grad():
            st.sae.b_dec.copy_(xs[0].mean(0))
    rows: list[tuple[float, float, float]] = []
    for i, x in enumerate(xs):
        with torch.no_grad():
            density = float((states[0].sae.encode(x)[1] > 0).float().mean())
        # states[0] always dense, states[1] always sparse; who goes first alternates
        order = [(states[0], 0.0), (states[1], 2.0)]
        ms = {}
        for st, below in order if i % 2 == 0 else order[::-1]:
            assert isinstance(st.sae, ReluSAE)
            st.sae.sparse_below = below
            t0 = time.perf_counter()
            train_step(st, x, cfg, args.steps)
            ms[below] = (time.perf_counter() - t0) * 1e3
        dense_ms, sparse_ms = ms[0.0], ms[2.0]
        if i >= 2:
            rows.append((density, dense_ms, sparse_ms))
    print(f"n={args.n} B={args.batch} threads={torch.get_num_threads()} store={args.run_dir}")
    print("density band   steps  dense ms  sparse ms  dense/sparse")
    bands = (
        (0.0, 0.05),
        (0.05, 0.1),
        (0.1, 0.15),
        (0.15, 0.2),
        (0.2, 0.25),
        (0.25, 0.3),
        (0.3, 0.4),
        (0.4, 1.0),
    )
    for lo, hi in bands:
        band = [r for r in rows if lo <= r[0] < hi]
        if band:
            d, s = statistics.median(r[1] for r in band), statistics.median(r[2] for r in band)
            print(f"{lo:.2f}-{hi:.2f}    {len(band):5d}  {d:8.1f}  {s:9.1f}  {d / s:11.2f}x")


if __name__ == "__main__":
    main()
