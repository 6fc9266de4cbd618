"""``monosemantic explain``: write an explanation for each chosen feature from its top contexts and
score it on held-out contexts (detection: the quantile samples against the random non-activating
windows; fuzzing: the firing tokens against random tokens of the same contexts), into the feature
database.

Offline explainers: ``tokens`` (contrastive token lists, ``features.explain``) and ``lexicon``
(the nearest WordNet or concept-list entry plus the firing tokens, ``features.label``)."""

from __future__ import annotations

import random
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monosemantic.features import db
from monosemantic.features.explain import (
    FIRING_SHARE,
    auc,
    balanced_accuracy,
    detection_scores,
    explain_offline,
    fuzz_pairs,
)
from monosemantic.features.label import SELF_WINDOW, Labeler
from monosemantic.features.scorers import ChatClient, Embedder, llm_detect, llm_explain
from monosemantic.features.tokens import decode_tokens, window_text
from monosemantic.progress import progress_bar


@dataclass(frozen=True)
class Scored:
    feature: int
    explanation: str
    auc: float
    balanced_accuracy: float
    fuzz_auc: float
    """AUC of the explanation's similarity to the firing tokens against random tokens of the same
    held-out contexts (NaN with an LLM, or when no context has tokens to draw)."""
    n_positive: int
    n_negative: int


def base_counts(con: sqlite3.Connection, corpus: int, words: list[bytes]) -> tuple[Counter[str], int]:
    """How often each token text occurs in the analysed sequences."""
    counts: Counter[str] = Counter()
    for (blob,) in con.execute("SELECT tokens FROM sequences WHERE corpus = ?", (corpus,)):
        counts.update(decode_tokens([words[t] for t in np.frombuffer(blob, dtype=np.int32)]))
    return counts, sum(counts.values())


BACKGROUND = 300
"""Random windows of the analysed text that the lexicon explainer scores itself against."""


def background_windows(
    con: sqlite3.Connection, corpus: int, words: list[bytes], n: int = BACKGROUND, seed: int = 0
) -> list[tuple[int, str]]:
    """(sequence index, text) of ``n`` windows of ``2 * label.SELF_WINDOW + 1`` tokens at random
    places of the analysed sequences, the same for every feature (drawn from the text, never from
    a feature's contexts; most are silent for any one feature, which fires on a few percent of
    tokens at most)."""
    width = SELF_WINDOW
    rng = random.Random(seed)
    ids = [r[0] for r in con.execute("SELECT id FROM sequences WHERE corpus = ? ORDER BY id", (corpus,))]
    out: list[tuple[int, str]] = []
    for sid in sorted(rng.choices(ids, k=n)) if ids else []:
        seq_index, blob = con.execute("SELECT seq, tokens FROM sequences WHERE id = ?", (sid,)).fetchone()
        seq = np.frombuffer(blob, dtype=np.int32)
        if len(seq) < 2 * width + 1:
            continue
        i = rng.randrange(width, len(seq) - width)
        texts, _ = window_text([words[t] for t in seq], i - width, i + width + 1)
        out.append((int(seq_index), "".join(texts)))
    return out


def marked(c: db.Context) -> str:
    """The context's text with its firing tokens wrapped in <<...>>, on one line."""
    top = max(c.acts) if c.acts else 0.0
    parts = [
        f"<<{t}>>" if top > 0 and a >= FIRING_SHARE * top else t
        for t, a in zip(c.tokens, c.acts, strict=True)
    ]
    return "".join(parts).replace("\n", " ")


SCORE_WINDOW = 4
"""Tokens on each side of the peak that the embedding scorer reads: the whole window would drown a
token-level feature in its surroundings."""


def around_peak(c: db.Context, width: int = SCORE_WINDOW) -> str:
    i = c.peak - c.start
    return "".join(c.tokens[max(0, i - width) : i + width + 1])


def choose_features(con: sqlite3.Connection, sae: str, n: int, ids: Sequence[int], seed: int) -> list[int]:
    """``ids`` if given, else ``n`` live features drawn at random (all of them when n = 0)."""
    if ids:
        for j in ids:
            db.feature_row(con, sae, j)
        return list(ids)
    live = [
        r[0] for r in con.execute("SELECT id FROM features WHERE sae = ? AND n_fired > 0 ORDER BY id", (sae,))
    ]
    return live if n <= 0 or n >= len(live) else sorted(random.Random(seed).sample(live, n))


def explainer_label(client: ChatClient | None, labeler: Labeler | None) -> str:
    """What the database records as the explainer of an explanation."""
    if client is not None:
        return "LLM"
    return "lexicon + MiniLM" if labeler is not None else "contrastive tokens + MiniLM"


def explained_by(con: sqlite3.Connection, sae: str, features: Sequence[int], label: str) -> set[int]:
    """Those of ``features`` whose explanation in the database is by the explainer ``label``."""
    rows = con.execute("SELECT id FROM features WHERE sae = ? AND explainer = ?", (sae, label))
    wanted = set(features)
    return {r[0] for r in rows if r[0] in wanted}


EXPLAINERS = ("tokens", "lexicon")


def score_offline(
    embedder: Embedder, text: str, top: list[db.Context], held: list[db.Context], neg: list[db.Context]
) -> tuple[float, float, float]:
    """(detection AUC, balanced accuracy, fuzzing AUC) of an explanation, with MiniLM similarities."""
    correct, fuzzed = fuzz_pairs(held)
    sims = embedder.similarities(text, [around_peak(c) for c in top + held + neg] + correct + fuzzed)
    n = len(top) + len(held) + len(neg)
    s_top, s_held, s_neg = np.split(sims[:n], [len(top), len(top) + len(held)])
    det_auc, det_bacc = detection_scores(s_top, s_held, s_neg)
    return det_auc, det_bacc, auc(sims[n : n + len(correct)], sims[n + len(correct) :])


def explain_features(
    con: sqlite3.Connection,
    sae: str,
    features: Sequence[int],
    *,
    embedder: Embedder | None = None,
    client: ChatClient | None = None,
    labeler: Labeler | None = None,
    write: bool = True,
) -> list[Scored]:
    """Explain and score each feature (with the LLM ``client`` if given, else offline with the
    ``embedder``: the ``labeler``'s lexicon explanations when given, else contrastive tokens; a
    labeler without a background gets one from this dictionary's analysed text); results are
    written to the database as they come unless ``write`` is false."""
    row = db.analysis(con, sae)
    assert row is not None
    words = db.vocab(con)
    base, total = base_counts(con, int(row["corpus"]), words)
    if labeler is not None and labeler.background is None and client is None:
        labeler = labeler.with_background(background_windows(con, int(row["corpus"]), words))
    label = explainer_label(client, labeler)
    out = []
    with progress_bar(unit="features") as bar:
        task = bar.add_task(f"explain {sae}", total=len(features), info="")
        for j in features:
            top, held, neg = (db.contexts(con, sae, j, kind, words) for kind in ("top", "quantile", "random"))
            # held out means unseen: a rare feature's samples are often its top contexts again
            held = [c for c in held if c.seq not in {t.seq for t in top}]
            if not top or not held or not neg:
                bar.advance(task)
                continue
            if client is not None:
                text = llm_explain(client, [marked(c) for c in top[:12]])
                pred = llm_detect(client, text, [c.text for c in held + neg])
                p, q = pred[: len(held)], pred[len(held) :]
                score_auc, score_bacc, fuzz = auc(p, q), balanced_accuracy(p, q, 0.5), float("nan")
            else:
                assert embedder is not None
                if labeler is not None:
                    # background windows from the sequences of the scoring contexts are left out
                    text = labeler.explain(top, base, total, avoid={c.seq for c in held + neg})
                else:
                    text = explain_offline(top, base, total)
                score_auc, score_bacc, fuzz = score_offline(embedder, text, top, held, neg)
            if write:
                with db.transaction(con):
                    db.set_explanation(con, sae, j, text, label, score_auc, score_bacc)
            out.append(Scored(j, text, score_auc, score_bacc, fuzz, len(held), len(neg)))
            bar.advance(task)
    return out
