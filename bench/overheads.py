"""What a stage costs beyond its core work, both measured in this process one after the other:

- harvest (``activations.harvest``: forward, outlier mask, float16 cast, shard writes) against the
  bare forward pass to the layer (``models.capture_residual``) over the same sequences;
- analyze (``stages.run_analyze`` on one dictionary of a run, from its store) against reading the
  store's training split and encoding it with the dictionary.

    python bench/overheads.py --run-dir RUN --sae relu-2048 [--harvest-tokens 8192]

RUN is copied to a temporary folder first (analyze writes features.sqlite). Prints JSON lines."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from monosemantic.activations import ActivationStore, harvest, resolve_layer
from monosemantic.config import AnalyzeConfig, HarvestConfig
from monosemantic.corpus import load_texts, take_sequences
from monosemantic.dictionary import load_dictionary
from monosemantic.models import capture_residual, load_model


def harvest_overhead(tokens: int) -> dict[str, float]:
    cfg = HarvestConfig(n_tokens=tokens, n_eval_tokens=0, device="cpu")
    lm = load_model(cfg.model)
    layer = resolve_layer(lm, cfg.layer)
    seqs = take_sequences(load_texts(cfg.corpus), lm.tokenizer, cfg.seq_len, -(-tokens // (cfg.seq_len - 1)))
    capture_residual(lm, layer, seqs[:2])  # warm up
    t0 = time.perf_counter()
    for i in range(0, len(seqs), cfg.batch_size):
        capture_residual(lm, layer, seqs[i : i + cfg.batch_size])
    bare = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        harvest(cfg, Path(tmp), lm)
        full = time.perf_counter() - t0
    n = len(seqs) * (cfg.seq_len - 1)
    return {
        "tokens": n,
        "bare_forward_tok_s": n / bare,
        "harvest_tok_s": n / full,
        "overhead": full / bare - 1,
    }


def analyze_overhead(run_dir: Path, sae: str) -> dict[str, float]:
    from monosemantic.stages.features import run_analyze

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "saes").mkdir()
        shutil.copytree(run_dir / "saes" / sae, run / "saes" / sae)
        (run / "activations").symlink_to((run_dir / "activations").resolve())
        shutil.copy(run_dir / "run.toml", run / "run.toml")
        store = ActivationStore(run)
        dictionary, _ = load_dictionary(run / "saes" / sae)
        t0, n = time.perf_counter(), 0
        with torch.no_grad():
            for acts in store.iter_split("train"):
                for i in range(0, len(acts), 4096):
                    dictionary(acts[i : i + 4096])
                n += len(acts)
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_analyze(run, AnalyzeConfig(sae=sae, device="cpu"))
        full = time.perf_counter() - t0
    return {
        "tokens": n,
        "read_encode_tok_s": n / bare,
        "analyze_tok_s": n / full,
        "overhead": full / bare - 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    ap.add_argument("--sae", default="relu-2048")
    ap.add_argument("--harvest-tokens", type=int, default=8192)
    args = ap.parse_args()
    print(json.dumps({"harvest": harvest_overhead(args.harvest_tokens)}), flush=True)
    print(json.dumps({"analyze": analyze_overhead(args.run_dir, args.sae)}), flush=True)


if __name__ == "__main__":
    main()
