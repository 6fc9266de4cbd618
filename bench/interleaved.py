"""compare_trainers.py's trainers in one process, stepped in turn on the same batches (the order
alternating every step), so that every trainer sees the same machine load: on a shared machine the
ratios from here are steadier than those of separate processes run one after another. Run it
from the peers' environment with this checkout first on the path::

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv-peers/bin/python bench/interleaved.py --run-dir runs/demo \\
        --n 2048 --trainers ours-topk,sparsify-topk --steps 20

Prints each trainer's median wall and CPU ms per step over the timed steps and the ratio of every
peer's to the first trainer's. The dead window and schedules are those compare_trainers.py sets
for a run of ``--skip + --steps`` steps; ``--skip`` steps of each run first, untimed."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare_trainers  # noqa: E402

from monosemantic.activations import ActivationStore  # noqa: E402
from monosemantic.config import TrainConfig  # noqa: E402
from monosemantic.sae import TopKSAE  # noqa: E402
from monosemantic.train import dead_window  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True, help="a run with an activation store")
    ap.add_argument("--n", type=int, default=2048, help="dictionary size")
    ap.add_argument("--trainers", default="ours-relu,saelens-standard", help="the first is 'ours'")
    ap.add_argument("--steps", type=int, default=20, help="timed steps of each")
    ap.add_argument("--skip", type=int, default=2, help="untimed steps of each first")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--profile", action="store_true", help="then profile 3 more steps of each")
    args = ap.parse_args()
    names = [t for t in args.trainers.split(",") if t]
    store = ActivationStore(Path(args.run_dir))
    total = args.skip + args.steps
    window = dead_window(TrainConfig(batch_size=args.batch_size), total)
    job = compare_trainers.Job(
        trainer="",
        n_features=args.n,
        run_dir=args.run_dir,
        tokens=total * args.batch_size,
        batch_size=args.batch_size,
        lr=3e-3,
        l1_coeff=1.0,
        k=args.k,
        seed=0,
        buffer_shards=16,
        threads=torch.get_num_threads(),
        dead_window=window,
        out="",
    )
    it = store.batches(args.batch_size, 0, 16)
    xs = [next(it) for _ in range(total)]
    del it
    trainers = {name: compare_trainers.BUILDERS[name](job, store.d_model) for name in names}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for i, x in enumerate(xs):
        for name in names if i % 2 == 0 else names[::-1]:
            TopKSAE.fast = name != "ours-topk-plain"  # a class flag: set for whichever steps now
            t0, c0 = time.perf_counter(), time.process_time()
            trainers[name].step(x)
            if i >= args.skip:
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    print(
        f"n={args.n} B={args.batch_size} threads={torch.get_num_threads()} steps {args.skip}-{total} "
        f"(dead window {window} tokens), store {args.run_dir}"
    )
    med = {
        name: (statistics.median(t for t, _ in ts) * 1e3, statistics.median(c for _, c in ts) * 1e3)
        for name, ts in times.items()
    }
    for name, (wall, cpu) in med.items():
        print(f"  {name:20s} {wall:7.1f} ms/step wall  {cpu:7.1f} ms CPU")
    first = names[0]
    for name in names[1:]:
        w, c = med[name][0] / med[first][0], med[name][1] / med[first][1]
        print(f"  {name} / {first}: {w:.2f}x wall, {c:.2f}x CPU")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in names:
            TopKSAE.fast = name != "ours-topk-plain"
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for x in xs[-3:]:
                    trainers[name].step(x)
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
