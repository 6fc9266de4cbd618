"""First-letter feature absorption (SAEBench's definition, ``monosemantic.absorption``) of the
dictionaries of one or more runs that share a model and layer.

    python bench/absorption.py RUN/saes/batchtopk-16384 RUN2/saes/matryoshka-16384 ... [--words 4000]

The word activations are computed once (the model forward over every prompt) and cached beside
the first run as absorption-words-<n>.pt; prints one JSON line per dictionary."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from monosemantic.absorption import Words, absorption, alpha_tokens, prompts, train_probe
from monosemantic.dictionary import load_dictionary
from monosemantic.fsio import read_json
from monosemantic.models import capture_residual, load_model


def word_activations(run: Path, n_words: int, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    manifest = read_json(run / "activations" / "manifest.json")
    cache = run / f"absorption-words-{n_words}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=True)
        return saved["x"], saved["y"]
    lm = load_model(manifest["model"])
    words = alpha_tokens(lm.tokenizer)
    pick = sorted(random.Random(0).sample(range(len(words.ids)), min(n_words, len(words.ids))))
    words = Words([words.ids[i] for i in pick], [words.letters[i] for i in pick])
    ids = prompts(lm.tokenizer, words)
    t0 = time.time()
    xs = [
        capture_residual(lm, manifest["layer"], ids[i : i + batch])[:, -6].float()
        for i in range(0, len(ids), batch)
    ]
    print(
        json.dumps(
            {"words": len(ids), "prompt_tokens": ids.shape[1], "forward_s": round(time.time() - t0, 1)}
        )
    )
    x, y = torch.cat(xs).cpu(), torch.tensor(words.letters)
    torch.save({"x": x, "y": y}, cache)
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("saes", nargs="+", type=Path, help="dictionary folders (RUN/saes/NAME)")
    ap.add_argument("--words", type=int, default=4000)
    args = ap.parse_args()
    torch.manual_seed(0)
    x, y = word_activations(args.saes[0].parent.parent, args.words)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    tr, te = order[:cut], order[cut:]
    probe = train_probe(x[tr], y[tr], 26)
    for folder in args.saes:
        sae, _ = load_dictionary(folder)
        with torch.no_grad():
            res = absorption(lambda t, s=sae: s(t).feats, sae.W_dec, x[tr], y[tr], x[te], y[te], probe)
        print(
            json.dumps(
                {
                    "sae": str(folder),
                    "mean_absorption_fraction": round(res.mean_absorption_fraction, 4),
                    "mean_full_absorption": round(res.mean_full_absorption, 4),
                    "mean_split_features": round(res.mean_split_features, 2),
                    "letters": len(res.letters),
                    "true_positives": sum(r.true_positives for r in res.letters),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
