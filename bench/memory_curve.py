"""Training memory against the store's size: write a synthetic activation store of T tokens
(random float16 activations, d = 576, in the harvest's shard format), train on it with
``monosemantic train`` in a subprocess, and sample that process's RSS every ``--every`` seconds.

    python bench/memory_curve.py --tokens 500000,2000000 --out /tmp/memcurve   # prints JSON lines

The trainer reads ``buffer_shards`` shards at a time (16 x 32,768 tokens by default, 1.2 GB as
float32), so its peak RSS should not grow with the store."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from monosemantic.fsio import write_json

D, SEQ, SHARD_SEQS = 576, 128, 258  # the demo's shape: 258 sequences of 127 tokens per shard


def synthetic_store(run: Path, tokens: int, eval_tokens: int = 20_000, d: int = D) -> None:
    """A store of ``tokens`` train and ``eval_tokens`` eval activations (standard normal, float16)
    of width ``d`` (a narrower store than the model's lets 100M tokens fit on a small disk)."""
    store = run / "activations"
    store.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    shards = []
    for split, budget in (("train", tokens), ("eval", eval_tokens)):
        done = 0
        while done < budget:
            seqs = min(SHARD_SEQS, -(-(budget - done) // (SEQ - 1)))
            n = seqs * (SEQ - 1)
            name = f"shard-{len(shards):05d}.safetensors"
            acts = torch.randn(n, d, generator=g).half()
            save_file(
                {
                    "acts": acts,
                    "tokens": torch.zeros(seqs, SEQ, dtype=torch.int32),
                    "keep": torch.ones(n, dtype=torch.uint8),
                },
                str(store / name),
            )
            shards.append({"file": name, "split": split, "n_seqs": seqs, "n_tokens": n, "n_kept": n})
            done += n
    write_json(
        store / "manifest.json",
        {
            "format": 1,
            "model": "default",
            "layer": 15,
            "d_model": d,
            "seq_len": SEQ,
            "store_dtype": "float16",
            "scale": 1.0,
            "shards": shards,
            "n_tokens": sum(s["n_tokens"] for s in shards),
            "harvest": {"config": {"outlier_ratio": 10.0}},
        },
    )


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", default="500000,2000000", help="store sizes, comma-separated")
    ap.add_argument("--out", type=Path, default=Path("/tmp/memcurve"))
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--train-args", default="--arch relu --sizes 512", help="extra `train` options")
    ap.add_argument("--d-model", type=int, default=D, help="the store's width (576: the default model's)")
    ap.add_argument(
        "--train-tokens",
        type=int,
        default=0,
        help="train on this many tokens of every store (--epochs set to match); 0 = one epoch each",
    )
    args = ap.parse_args()
    for tokens in (int(t) for t in args.tokens.split(",")):
        run = args.out / f"store-{tokens}"
        shutil.rmtree(run, ignore_errors=True)
        synthetic_store(run, tokens, d=args.d_model)
        epochs = ["--epochs", f"{args.train_tokens / tokens:.6g}"] if args.train_tokens else []
        cmd = [sys.executable, "-m", "monosemantic", "train", "--out", str(run), *args.train_args.split()]
        cmd += epochs
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
        curve = []
        while proc.poll() is None:
            rss = rss_mib(proc.pid)
            if rss is not None:
                curve.append((round(time.time() - t0, 1), round(rss)))
            time.sleep(args.every)
        if proc.returncode:
            sys.exit(f"train failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        disk = sum(f.stat().st_size for f in (run / "activations").iterdir()) / 2**20
        print(
            json.dumps(
                {
                    "store_tokens": tokens,
                    "d_model": args.d_model,
                    "store_mib": round(disk),
                    "seconds": round(time.time() - t0, 1),
                    "peak_rss_mib": max(r for _, r in curve),
                    "curve": curve[:: max(1, len(curve) // 40)],
                }
            ),
            flush=True,
        )
        shutil.rmtree(run / "activations")


if __name__ == "__main__":
    main()
