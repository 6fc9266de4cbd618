"""Score the offline explainers on a run's dictionaries without writing to its database: detection
AUC, balanced accuracy and fuzzing AUC, mean and distribution per explainer and dictionary (the
table in docs/features.md).

    python scripts/explainer_eval.py runs/demo --sae relu-2048 relu-16384 --features 100
    python scripts/explainer_eval.py runs/demo --sae relu-16384 --ids 9942,5978   # chosen features

Explainers: ``tokens`` (contrastive token list), ``lexicon-nearest`` (the WordNet or concept entry
nearest to the firing windows, the lexicon explainer before it scored itself) and ``lexicon``
(the default: the entry chosen by its self-score on the top contexts against random text).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from monosemantic.features import db
from monosemantic.features.explain import auc
from monosemantic.features.explain_run import around_peak, choose_features, explain_features
from monosemantic.features.label import default_labeler
from monosemantic.features.scorers import Embedder


def summary(values: list[float]) -> str:
    v = np.array([x for x in values if x == x])
    if len(v) == 0:
        return "n/a"
    q = np.percentile(v, [10, 25, 50, 75, 90])
    return (
        f"mean {v.mean():.3f} | p10 {q[0]:.2f} p25 {q[1]:.2f} median {q[2]:.2f} p75 {q[3]:.2f} "
        f"p90 {q[4]:.2f} | >= 0.7: {(v >= 0.7).mean():.0%} (n={len(v)})"
    )


def by_band(con, sae: str, embedder: Embedder, res: list) -> str:
    """Mean over features of the AUC of each quantile band's held-out contexts against the
    non-activating ones, scored exactly as ``explain_run.score_offline`` scores them."""
    words = db.vocab(con)
    per: dict[int, list[float]] = {}
    for r in res:
        top, held, neg = (db.contexts(con, sae, r.feature, k, words) for k in ("top", "quantile", "random"))
        held = [c for c in held if c.seq not in {t.seq for t in top} and c.band is not None]
        sims = embedder.similarities(r.explanation, [around_peak(c) for c in held + neg])
        s_held, s_neg = sims[: len(held)], sims[len(held) :]
        for band in sorted({c.band for c in held}):
            idx = [i for i, c in enumerate(held) if c.band == band]
            per.setdefault(band, []).append(auc(s_held[idx], s_neg))
    return " ".join(f"{np.mean(v):.2f}" for _, v in sorted(per.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--sae", nargs="+", required=True)
    ap.add_argument("--features", type=int, default=100)
    ap.add_argument("--ids", default="", help="comma-separated feature ids (one dictionary)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write every explanation and score here")
    ap.add_argument("--explainers", default="tokens,lexicon-nearest,lexicon", help="comma-separated")
    ap.add_argument(
        "--bands", action="store_true", help="also detection AUC per activation band of the held-out samples"
    )
    args = ap.parse_args()
    embedder = Embedder()
    labeler = default_labeler(embedder)
    # the lexicon explainer as it was: the entry nearest to the firing windows, no self-score
    variants = {
        "tokens": None,
        "lexicon-nearest": dataclasses.replace(labeler, background=np.zeros((0, 384))),
        "lexicon": labeler,
    }
    con = db.open_db(args.run, readonly=True)
    rows = []
    for sae in args.sae:
        ids = [int(i) for i in args.ids.split(",") if i]
        chosen = choose_features(con, sae, args.features, ids, args.seed)
        for name in args.explainers.split(","):
            variant = variants[name]
            res = explain_features(con, sae, chosen, embedder=embedder, labeler=variant, write=False)
            print(f"\n{sae} {name}: {len(res)} scored of {len(chosen)}")
            print("  detection AUC   ", summary([r.auc for r in res]))
            print("  balanced acc.   ", summary([r.balanced_accuracy for r in res]))
            print("  fuzzing AUC     ", summary([r.fuzz_auc for r in res]))
            if args.bands:
                print("  detection AUC by band (weakest first):", by_band(con, sae, embedder, res))
            rows += [{"sae": sae, "explainer": name, **r.__dict__} for r in res]
    con.close()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
