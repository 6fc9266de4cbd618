"""Run `monosemantic search` for many queries with the model loaded once, and print each query's
best features with their top contexts: the study behind the concept table in docs/features.md.

    python scripts/concept_search.py runs/demo --sae relu-16384 "Paris" "SQL injection" ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

from monosemantic.config import load_stage
from monosemantic.corpus import load_texts
from monosemantic.dictionary import load_dictionary
from monosemantic.features import db
from monosemantic.features.search import search
from monosemantic.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("queries", nargs="+")
    ap.add_argument("--sae", required=True)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--contexts", type=int, default=4)
    args = ap.parse_args()
    harvest = load_stage(args.run, "harvest")
    lm = load_model(harvest.model)
    sae, cfg = load_dictionary(args.run / "saes" / args.sae)
    con = db.open_db(args.run, readonly=True)
    words = db.vocab(con)
    for query in args.queries:
        hits, occs = search(
            con, lm, int(cfg["layer"]), args.sae, sae, query, top=args.top, texts=load_texts(harvest.corpus)
        )
        print(f"\n=== {query!r}: {len(occs)} occurrences")
        for h in hits:
            print(
                f"  #{h.feature}: score {h.score:.2f} strength {h.strength:.2f} hit {h.hit_rate:.2f} "
                f"lift {h.lift:.0f} freq {100 * h.freq:.3f}% top-ctx precision {h.context_precision:.2f}"
            )
            for c in db.contexts(con, args.sae, h.feature, "top", words)[: args.contexts]:
                i = c.peak - c.start
                text = "".join(c.tokens[:i]) + "[[" + c.tokens[i] + "]]" + "".join(c.tokens[i + 1 :])
                print(f"      {c.activation:5.2f} {text!r}")
    con.close()


if __name__ == "__main__":
    main()
