"""Explanations of features, and how well they predict where a feature fires.

Offline explainer (the default): contrastive token statistics. From a feature's top contexts it
takes the *firing tokens* (activation ≥ half the context's peak) and the token just before each
peak, and keeps those over-represented against the corpus: a token's weight is its share of the
feature's contexts times the log ratio of that share to the token's corpus frequency. The
explanation lists the best few, e.g. ``fires on " def" (95%); after "\\n   " (90%)``.

Scoring (detection, as Delphi does): does the explanation tell the feature's activating contexts
from non-activating ones? Each held-out context (a quantile sample from a sequence that is not
among the top contexts the explainer saw) gets a similarity to the explanation; the AUC of that
similarity over activating vs non-activating contexts, and the balanced accuracy at a threshold
chosen on the top contexts, are the explanation's scores. The non-activating contexts are split in
two: one half sets the threshold (against the top contexts), the other half tests it, so that
no score is measured on the contexts it was tuned on (``detection_scores``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monosemantic.features.db import Context

FIRING_SHARE = 0.5
"""A token "fires" when its activation is at least this share of its context's peak."""


@dataclass(frozen=True)
class Term:
    text: str
    share: float
    """Fraction of the feature's contexts where it appears (as a firing token, or before the peak)."""
    weight: float


def _norm(token: str) -> str:
    return token.replace("\n", "⏎").replace("\t", "⇥")


def contrastive_terms(
    contexts: Sequence[Context], base: Counter[str], base_total: int, *, before_peak: bool = False, k: int = 3
) -> list[Term]:
    """The k tokens most over-represented among the contexts' firing tokens (or, with
    ``before_peak``, the tokens just before the peaks) relative to ``base`` token counts."""
    seen: Counter[str] = Counter()
    for c in contexts:
        i = c.peak - c.start
        if before_peak:
            picked = {c.tokens[i - 1]} if i > 0 else set()
        else:
            top = max(c.acts) if c.acts else 0.0
            picked = {t for t, a in zip(c.tokens, c.acts, strict=True) if top > 0 and a >= FIRING_SHARE * top}
        seen.update(t for t in picked if t.strip() or t)
    n = max(len(contexts), 1)
    terms = []
    for tok, count in seen.items():
        share = count / n
        if count < 2 and n > 1:
            continue
        p_base = (base.get(tok, 0) + 1) / (base_total + len(base) + 1)
        weight = share * math.log(share / p_base)
        if weight > 0:
            terms.append(Term(tok, share, weight))
    return sorted(terms, key=lambda t: -t.weight)[:k]


def explain_offline(contexts: Sequence[Context], base: Counter[str], base_total: int) -> str:
    fires = contrastive_terms(contexts, base, base_total)
    before = contrastive_terms(contexts, base, base_total, before_peak=True, k=2)
    if not fires:
        return "no consistent tokens"
    text = "fires on " + ", ".join(f'"{_norm(t.text)}" ({t.share:.0%})' for t in fires)
    before = [t for t in before if t.share >= 0.3]
    if before:
        text += "; after " + ", ".join(f'"{_norm(t.text)}" ({t.share:.0%})' for t in before)
    return text


def row_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Row by row, P(a random positive scores above a random negative), ties counting half
    (Mann-Whitney): pos (m, p) and neg (m, n) scores -> (m,)."""
    diff = pos[:, :, None] - neg[:, None, :]
    return (diff > 0).mean((1, 2)) + 0.5 * (diff == 0).mean((1, 2))


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """``row_auc`` of one row: pos (p,), neg (n,) -> a number; NaN when either is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(row_auc(pos[None], neg[None])[0])


def best_threshold(pos: np.ndarray, neg: np.ndarray) -> float:
    """The threshold (predict "fires" at or above it) with the best balanced accuracy on these scores."""
    candidates = np.unique(np.concatenate([pos, neg]))
    accs = [balanced_accuracy(pos, neg, t) for t in candidates]
    return float(candidates[int(np.argmax(accs))]) if len(candidates) else 0.0


def balanced_accuracy(pos: np.ndarray, neg: np.ndarray, threshold: float) -> float:
    tpr = float((pos >= threshold).mean()) if len(pos) else float("nan")
    tnr = float((neg < threshold).mean()) if len(neg) else float("nan")
    return (tpr + tnr) / 2


def detection_scores(top: np.ndarray, held: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """(AUC, balanced accuracy) of scores on held-out activating vs non-activating contexts. The
    threshold comes from the top contexts against the even-numbered negatives and is tested on the
    held-out positives against the odd-numbered ones (NaN with fewer than two negatives)."""
    if len(neg) < 2:
        return auc(held, neg), float("nan")
    return auc(held, neg), balanced_accuracy(held, neg[1::2], best_threshold(top, neg[::2]))


FUZZ_NEIGHBOURS = 1
"""Tokens on each side of a highlighted token that the fuzzing scorer reads with it."""


def fuzz_pairs(contexts: Sequence[Context], seed: int = 0) -> tuple[list[str], list[str]]:
    """Fuzzing, as Delphi defines it (Paulo et al. 2024, *Automatically Interpreting Millions of
    Features in LLMs*): in each activating context the *correct* highlight is the firing tokens
    (activation ≥ ``FIRING_SHARE`` of the peak), the *fuzzed* one the same number of tokens drawn
    at random among the non-firing ones (away from the firing ones when possible); a scorer that
    understood the explanation tells them apart. Offline, each highlight is read as the text of
    its tokens with ``FUZZ_NEIGHBOURS`` around each.
    Returns (correct, fuzzed) texts, one pair per context that has non-firing tokens to draw."""
    rng = np.random.default_rng(seed)
    correct, fuzzed = [], []

    def text(tokens: list[str], picked: Sequence[int]) -> str:
        spans = [
            "".join(tokens[max(0, i - FUZZ_NEIGHBOURS) : i + FUZZ_NEIGHBOURS + 1]) for i in sorted(picked)
        ]
        return " … ".join(spans)

    for c in contexts:
        top = max(c.acts) if c.acts else 0.0
        if top <= 0:
            continue
        firing = [i for i, a in enumerate(c.acts) if a >= FIRING_SHARE * top]
        # quiet tokens whose window does not take in a firing one, when there are enough
        quiet = [i for i, a in enumerate(c.acts) if a <= 0]
        far = [i for i in quiet if all(abs(i - f) > FUZZ_NEIGHBOURS for f in firing)]
        quiet = far if len(far) >= len(firing) else quiet
        if not firing or len(quiet) < len(firing):
            continue
        correct.append(text(c.tokens, firing))
        fuzzed.append(text(c.tokens, rng.choice(quiet, size=len(firing), replace=False).tolist()))
    return correct, fuzzed
