"""One-pass size sweep vs one size after another, on a run's activation store.

    python bench/sweep_one_pass.py runs/demo --sizes 512,2048,16384 --tokens 51200

Trains the sizes together from one batch stream (each batch read once, what `monosemantic train`
does), then each size alone from its own stream, for the same tokens, and prints wall-clock times.
Data loading here is shard reading and shuffling; with on-the-fly training (`train --model`) each
separate run would also repeat the model's forward pass, which this does not measure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from monosemantic.activations import ActivationStore
from monosemantic.config import TrainConfig
from monosemantic.train import train


def timed_train(store: ActivationStore, sizes: list[int], tokens: int, batch: int) -> float:
    cfg = TrainConfig(sizes=sizes, batch_size=batch, epochs=1.0, checkpoint_every=10**9, log_every=10**9)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(
            cfg,
            lambda step: store.batches(batch, cfg.seed, cfg.buffer_shards, step),
            run_dir=Path(tmp),
            d_model=store.d_model,
            n_train_tokens=tokens,
            scale=store.scale,
            meta={},
        )
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--sizes", default="512,2048,16384")
    ap.add_argument("--tokens", type=int, default=51_200)
    ap.add_argument("--batch", type=int, default=512)
    args = ap.parse_args()
    store = ActivationStore(args.run)
    sizes = [int(s) for s in args.sizes.split(",")]
    together = timed_train(store, sizes, args.tokens, args.batch)
    alone = {n: timed_train(store, [n], args.tokens, args.batch) for n in sizes}
    result = {
        "sizes": sizes,
        "tokens": args.tokens,
        "together_s": round(together, 2),
        "separately_s": {n: round(t, 2) for n, t in alone.items()},
        "speedup": round(sum(alone.values()) / together, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
