"""Measure concept search on a run with the bundled concept list (data/concepts.tsv): the study
behind the precision table in docs/features.md. The judging is a person's: this script gathers the
evidence, writes a sheet to judge from, and scores the verdicts that were committed.

    python scripts/concept_eval.py count                                  # occurrences in the corpus
    python scripts/concept_eval.py collect runs/demo --cache /tmp/cc      # model forwards (slow), cached
    python scripts/concept_eval.py sheet runs/demo --cache /tmp/cc --sae relu-16384 > sheet.txt
    python scripts/concept_eval.py score runs/demo --cache /tmp/cc --sae relu-16384 \\
        --verdicts docs/data/concept_verdicts.tsv                         # precision@1, @5 per method
    python scripts/concept_eval.py table runs/demo --cache /tmp/cc --sae relu-16384 \\
        --verdicts docs/data/concept_verdicts.tsv                         # the table in docs/features.md

Judging rules (docs/features.md), applied to the feature's 10 strongest top contexts as the sheet
prints them (peak token in [brackets]; "mentions" counts those containing the concept or an alias,
a hint only):
- yes: in at least 5 of them the feature fires on the concept: the peak token is (part of) the
  concept, an alias or inflection, or a word for the concept itself (a synonym, or a word that
  names it: "Roman" for Rome, "judges" for court), or the peak is inside a phrase naming it
  ("percent of [vote]"). For a word of a language (und, 的) the peak must be that word, not the
  same letters inside other words.
- kind: not yes, but at least 5 are about the concept's category (other city names for Berlin,
  other emotion words for sadness, digits of years for 1990, text in the same language).
- no: anything else. Only yes counts as a hit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from monosemantic.config import load_stage
from monosemantic.corpus import load_texts
from monosemantic.dictionary import load_dictionary
from monosemantic.features import db
from monosemantic.features.concepts import Concept, count_occurrences, form_pattern, load_concepts
from monosemantic.features.rerank import POOL, WindowEmbeddings, semantic_rerank
from monosemantic.features.scorers import Embedder
from monosemantic.features.search import RANKINGS, encode_spans, fts_phrase, occurrences, rank, span_residuals
from monosemantic.models import load_model

N_JUDGED = 10
"""Top contexts read per feature."""


def cmd_count(args: argparse.Namespace) -> None:
    concepts = load_concepts()
    counts = count_occurrences(load_texts(args.corpus), concepts)
    print("| kind | concept | occurrences | documents |\n| --- | --- | ---: | ---: |")
    for c in concepts:
        print(f"| {c.kind} | `{c.name}` | {counts[c.name][0]} | {counts[c.name][1]} |")
    occ = np.array([v[0] for v in counts.values()])
    print(f"\n{len(concepts)} concepts, {len({c.kind for c in concepts})} kinds; occurrences: median "
          f"{int(np.median(occ))}, fewer than 10 for {(occ < 10).sum()}, none for {(occ == 0).sum()}",
          file=sys.stderr)  # fmt: skip


def _cache_file(cache: Path, sae: str, concept: Concept) -> Path:
    return cache / sae / (concept.name.encode().hex() + ".npz")


def cmd_collect(args: argparse.Namespace) -> None:
    """Per concept and dictionary: each occurrence's span activations (sparse), span lengths,
    sources, and the top-context precision of every feature."""
    harvest = load_stage(args.run, "harvest")
    lm = load_model(harvest.model)
    con = db.open_db(args.run, readonly=True)
    words = db.vocab(con)
    texts = list(load_texts(harvest.corpus))
    saes = {name: load_dictionary(args.run / "saes" / name) for name in args.sae}
    layer = int(next(iter(saes.values()))[1]["layer"])
    for c in load_concepts():
        todo = [n for n in saes if not _cache_file(args.cache, n, c).is_file()]
        if not todo:
            continue
        row = db.analysis(con, todo[0])
        assert row is not None
        occs = occurrences(con, int(row["corpus"]), lm, c.name, words, args.matches, texts)
        resids = span_residuals(lm, layer, occs) if occs else []
        for name in todo:
            sae, _ = saes[name]
            acts = encode_spans(sae, resids).numpy() if resids else np.zeros((0, sae.n_features))
            occ, feat = np.nonzero(acts)
            n_top = max(1, int(db.loads(db.analysis(con, name)["config"])["top_k"]))
            prec = db.search_contexts(con, name, fts_phrase(c.name))
            out = _cache_file(args.cache, name, c)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                out,
                occ=occ.astype(np.int32),
                feat=feat.astype(np.int32),
                val=acts[occ, feat].astype(np.float32),
                shape=np.array(acts.shape),
                spans=np.array([o.span[1] - o.span[0] for o in occs]),
                is_query=np.array([o.source == "query" for o in occs], dtype=bool),
                prec_feat=np.array(list(prec), dtype=np.int64),
                prec_val=np.array(list(prec.values())) / n_top,
            )
        print(f"{c.name}: {len(occs)} occurrences", file=sys.stderr)
    con.close()  # closed, SQLite removes the -wal / -shm files it made


def load_cached(cache: Path, sae: str, c: Concept) -> dict[str, np.ndarray]:
    z = np.load(_cache_file(cache, sae, c))
    acts = np.zeros(tuple(z["shape"]), dtype=np.float32)
    acts[z["occ"], z["feat"]] = z["val"]
    return {"acts": acts, **{k: z[k] for k in ("spans", "is_query", "prec_feat", "prec_val")}}


METHODS = (*RANKINGS, "semantic")
"""The library's rankings, then ``corpus+contexts`` reranked by meaning (``features.rerank``), as
``monosemantic search`` does by default."""
_windows: dict[str, WindowEmbeddings] = {}


def ranked(con, sae: str, cache: Path, method: str, top: int) -> dict[str, list[int]]:  # noqa: ANN001
    stats = db.feature_stats(con, sae)
    semantic = method == "semantic"
    if semantic and sae not in _windows:
        _windows[sae] = WindowEmbeddings(con, sae, Embedder())
    out = {}
    for c in load_concepts():
        if not _cache_file(cache, sae, c).is_file():
            continue  # not collected (yet)
        z = load_cached(cache, sae, c)
        if len(z["acts"]) == 0:
            out[c.name] = []
            continue
        prec = dict(zip(z["prec_feat"].tolist(), z["prec_val"].tolist(), strict=True))
        acts, spans, is_query = torch.from_numpy(z["acts"]), z["spans"].tolist(), z["is_query"].tolist()
        base = "corpus+contexts" if semantic else method
        hits = rank(acts, spans, stats, prec, POOL if semantic else top, is_query=is_query, method=base)
        if semantic:
            hits = semantic_rerank(hits, c.name, _windows[sae])[:top]
        out[c.name] = [h.feature for h in hits]
    return out


def mentions(con, sae: str, feature: int, c: Concept, words: list[bytes]) -> tuple[int, list[str]]:  # noqa: ANN001
    """How many of the feature's top contexts contain a form of the concept, and the contexts'
    text with the peak token in [brackets]."""
    pat = form_pattern(c.forms)
    shown = []
    n = 0
    for ctx in db.contexts(con, sae, feature, "top", words)[:N_JUDGED]:
        n += bool(pat.search(ctx.text))
        i = ctx.peak - ctx.start
        text = "".join(ctx.tokens[:i])[-45:] + "[" + ctx.tokens[i] + "]" + "".join(ctx.tokens[i + 1 :])[:15]
        shown.append(text.replace("\n", "⏎"))
    return n, shown


def cmd_sheet(args: argparse.Namespace) -> None:
    """Every (concept, feature) that some ranking puts in its top ``--top`` (5), with the evidence to
    judge it; ``--method`` limits the rankings (e.g. ``--method semantic --top 1``: the default's
    first result only, for precision@1 alone)."""
    con = db.open_db(args.run, readonly=True)
    words = db.vocab(con)
    ranks = {m: ranked(con, args.sae, args.cache, m, args.top) for m in args.method or METHODS}
    done = read_column(args.verdicts, args.sae, 3) if args.verdicts else {}
    for c in load_concepts():
        feats = sorted({f for r in ranks.values() for f in r.get(c.name, [])})
        for f in feats:
            if (c.name, f) in done and not args.all:
                continue
            n, shown = mentions(con, args.sae, f, c, words)
            where = " ".join(
                f"{m}:{r[c.name].index(f) + 1}" for m, r in ranks.items() if f in r.get(c.name, [])
            )
            print(f"\n## {c.name} ({c.kind}) #{f}  mentions {n}/{N_JUDGED}  rank {where}")
            for s in shown:
                print("   ", s)
    con.close()  # closed, SQLite removes the -wal / -shm files it made


def read_column(path: Path, sae: str, column: int) -> dict[tuple[str, int], str]:
    """(concept, feature) -> the verdicts file's ``column`` (3: the verdict, 4: the note), for the
    rows of dictionary ``sae`` that have it."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) > column and cols[0] == sae:
            out[(cols[1], int(cols[2]))] = cols[column]
    return out


def cmd_score(args: argparse.Namespace) -> None:
    con = db.open_db(args.run, readonly=True)
    verdicts = read_column(args.verdicts, args.sae, 3)
    concepts = load_concepts()
    for m in args.method or METHODS:
        r = ranked(con, args.sae, args.cache, m, 5)
        missing = [(c.name, f) for c in concepts for f in r[c.name] if (c.name, f) not in verdicts]
        if missing:
            print(f"{m}: {len(missing)} unjudged, e.g. {missing[:5]}", file=sys.stderr)
        hit = lambda name, f: verdicts.get((name, f)) == "yes"  # noqa: E731
        near = lambda name, f: verdicts.get((name, f)) in ("yes", "kind")  # noqa: E731
        p1 = np.mean([bool(r[c.name]) and hit(c.name, r[c.name][0]) for c in concepts])
        p5 = np.mean([sum(hit(c.name, f) for f in r[c.name]) / 5 for c in concepts])
        any5 = np.mean([any(hit(c.name, f) for f in r[c.name]) for c in concepts])
        k1 = np.mean([bool(r[c.name]) and near(c.name, r[c.name][0]) for c in concepts])
        k5 = np.mean([sum(near(c.name, f) for f in r[c.name]) / 5 for c in concepts])
        print(
            f"{args.sae} {m}: precision@1 {p1:.3f}  precision@5 {p5:.3f}  hit in top 5 {any5:.3f}  "
            f"| concept or its kind: @1 {k1:.3f}  @5 {k5:.3f}"
        )
        if args.by_kind:
            for kind in dict.fromkeys(c.kind for c in concepts):
                ks = [c for c in concepts if c.kind == kind]
                k1 = sum(bool(r[c.name]) and hit(c.name, r[c.name][0]) for c in ks)
                h5 = sum(hit(c.name, f) for c in ks for f in r[c.name])
                a5 = sum(any(hit(c.name, f) for f in r[c.name]) for c in ks)
                n5 = sum(near(c.name, f) for c in ks for f in r[c.name])
                print(f"    {kind:10s} p@1 {k1}/{len(ks)}  hits@5 {h5}/{5 * len(ks)}  "
                      f"hit in top 5 {a5}/{len(ks)}  concept or kind@5 {n5}/{5 * len(ks)}")  # fmt: skip
        if args.by_occurrences:
            _by_occurrences(con, args.sae, concepts, r, verdicts)
    con.close()  # closed, SQLite removes the -wal / -shm files it made


OCCURRENCE_BINS = (0, 5, 10, 30, 100)
"""Lower edges of the bins of `score --by-occurrences`."""


def _by_occurrences(con, sae: str, concepts: list[Concept], r: dict[str, list[int]], verdicts: dict) -> None:  # noqa: ANN001
    """Precision@1 by how often the concept occurs in the text the run analysed (the sequences
    whose top contexts are read): a feature is judged on its 10 top contexts, so a concept seen
    fewer than 5 times there cannot be a hit, and one seen a handful of times rarely has a
    feature of its own."""
    row = db.analysis(con, sae)
    assert row is not None
    texts = db.sequence_texts(con, int(row["corpus"]))
    counts = count_occurrences(texts, concepts)
    edges = (*OCCURRENCE_BINS, None)
    print(f"    by occurrences in the analysed text ({len(texts)} sequences):")
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        ks = [c for c in concepts if counts[c.name][0] >= lo and (hi is None or counts[c.name][0] < hi)]
        firsts = [verdicts.get((c.name, r[c.name][0])) if r[c.name] else None for c in ks]
        label = f"{lo}+" if hi is None else f"{lo}-{hi - 1}"
        print(f"    {label:>7s}: {len(ks):3d} concepts  p@1 {firsts.count('yes')}/{len(ks)}  "
              f"kind {firsts.count('kind')}  no {firsts.count('no')}"
              + (f"  not judged {firsts.count(None)}" if None in firsts else ""))  # fmt: skip


def cmd_table(args: argparse.Namespace) -> None:
    """The markdown table of docs/features.md: per concept, its occurrences in the corpus, the
    first feature of the plain ranking and of the default one, their verdicts, and the default
    one's strongest context."""
    from monosemantic.stages.features import snippet

    con = db.open_db(args.run, readonly=True)
    words = db.vocab(con)
    verdicts = read_column(args.verdicts, args.sae, 3)
    notes = read_column(args.verdicts, args.sae, 4)
    counts = count_occurrences(load_texts(load_stage(args.run, "harvest").corpus), load_concepts())
    base = ranked(con, args.sae, args.cache, "base", 1)
    best = ranked(con, args.sae, args.cache, "semantic", 1)
    print("| kind | concept | occurrences | plain ranking: first | verdict | default: first | verdict "
          "| its strongest context | what its top contexts are |")  # fmt: skip
    print("| --- | --- | ---: | ---: | --- | ---: | --- | --- | --- |")
    for c in load_concepts():
        b, s = (base[c.name] or [None])[0], (best[c.name] or [None])[0]
        ctx = snippet(con, args.sae, s, words, 50).replace("|", "\\|") if s is not None else ""
        print(f"| {c.kind} | `{c.name}` | {counts[c.name][0]} | {b} | {verdicts.get((c.name, b), '')} | {s} "
              f"| {verdicts.get((c.name, s), '')} | `{ctx}` | {notes.get((c.name, s), '')} |")  # fmt: skip
    con.close()  # closed, SQLite removes the -wal / -shm files it made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("count")
    p.add_argument("--corpus", default="default")
    for name in ("collect", "sheet", "score", "table"):
        p = sub.add_parser(name)
        p.add_argument("run", type=Path)
        p.add_argument("--cache", type=Path, required=True)
        p.add_argument("--sae", nargs="+" if name == "collect" else None, required=True)
        p.add_argument("--matches", type=int, default=32)
        p.add_argument("--verdicts", type=Path)
        p.add_argument("--all", action="store_true", help="sheet: also pairs already judged")
        p.add_argument("--by-kind", action="store_true")
        p.add_argument("--by-occurrences", action="store_true",
                       help="score: precision@1 by occurrences in the analysed text")  # fmt: skip
        p.add_argument("--method", nargs="+", choices=METHODS, help="sheet, score: only these rankings")
        p.add_argument("--top", type=int, default=5, help="sheet: results per ranking")
    args = ap.parse_args()
    commands = {"count": cmd_count, "collect": cmd_collect, "sheet": cmd_sheet, "score": cmd_score}
    commands["table"] = cmd_table
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
