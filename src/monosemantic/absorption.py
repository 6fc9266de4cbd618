"""First-letter feature absorption, as SAEBench measures it (Chanin et al., *A is for Absorption*,
2024; the absorption-fraction score by Demian Till; SAEBench's ``evals/absorption``).

A dictionary absorbs a feature when a general latent ("starts with S") stays silent on some tokens
where the feature is present, because a more specific latent ("snake") has taken over its
direction there. The measure, per first letter:

1. **Ground truth**: a linear probe (one-vs-rest logistic regression over 26 letters) on the
   residual stream at the word's position in ``"{word} has the first letter:"`` prompts, preceded
   by ten in-context examples ``"{other} has the first letter: O"``.
2. **Main latents**: an L1-regularised probe on the dictionary's latents ranks them per letter; a
   logistic regression on the top k (k = 1..10) is fitted for each k, and k grows while its test
   F1 rises by more than 0.03 (feature splitting). The main latents are the last such top k.
3. **Absorption** on the test words of the letter that the probe detects (its true positives), from
   each latent's projection onto the probe direction p, a_i · cos(W_dec[:, i], p):
   - absorption fraction: the share of the probe's projection x·p that latents other than the main
     ones (at most 3, each with cos ≥ 0.1 and a positive projection) account for, when together
     they cover at least 40% of it and the main latents fall short of it (0 otherwise);
   - full absorption: the main latents are all silent, and the top projecting latent has cos ≥
     0.025 and carries at least 40% of x·p.
   Each is averaged over the letter's true positives, then over letters.

SAEBench reads gemma-2-2b's vocabulary; we read the default model's (SmolLM2's BPE): single tokens
that are ASCII letters after an optional leading space, each placed as one token id into the
prompt so that every prompt has the same length and the word sits 6 tokens from the end. Letters
whose probe has test F1 < 0.6, or fewer than ``min_true_positives`` true positives, are skipped.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

LETTERS = string.ascii_lowercase
TEMPLATE_TAIL = " has the first letter:"


class Words(NamedTuple):
    ids: list[int]
    """token id of each word."""
    letters: list[int]
    """0..25: each word's first letter."""


def alpha_tokens(tokenizer: Any) -> Words:
    """Every vocabulary token that decodes to ASCII letters (after one optional leading space),
    at least two of them, as SAEBench's ``get_alpha_tokens`` selects words."""
    ids, letters = [], []
    for i in range(len(tokenizer)):
        text = tokenizer.decode([i])
        word = text[1:] if text.startswith(" ") else text
        if len(word) >= 2 and word.isascii() and word.isalpha():
            ids.append(i)
            letters.append(LETTERS.index(word[0].lower()))
    return Words(ids, letters)


def prompts(tokenizer: Any, words: Words, n_examples: int = 10, seed: int = 0) -> Tensor:
    """(N, T) token ids: ``n_examples`` in-context lines "{other} has the first letter: X" and then
    "{word} has the first letter:", the word 6 tokens from the end (words must be one token)."""
    tail = tokenizer.encode(TEMPLATE_TAIL, add_special_tokens=False)
    newline = tokenizer.encode("\n", add_special_tokens=False)
    answers = [tokenizer.encode(" " + c.upper(), add_special_tokens=False) for c in LETTERS]
    if len(tail) != 5 or any(len(a) != 1 for a in answers):
        raise ValueError("the tokenizer splits the prompt template differently from SAEBench's")
    rng = random.Random(seed)
    rows = []
    for wid in words.ids:
        row: list[int] = []
        for j in rng.choices(range(len(words.ids)), k=n_examples):
            row += [words.ids[j], *tail, *answers[words.letters[j]], *newline]
        rows.append([*row, wid, *tail])
    return torch.tensor(rows)


def train_probe(
    x: Tensor, y: Tensor, n_classes: int, steps: int = 300, l1: float = 0.0
) -> tuple[Tensor, Tensor]:
    """One-vs-rest logistic probes (SAEBench's ``train_multi_probe``: BCE on one-hot labels, Adam
    at 0.01 decaying to 1e-5, an optional L1 penalty on the weights), full batch.
    x (N, d), y (N,) long -> weights (C, d), bias (C,)."""
    w = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    target = torch.nn.functional.one_hot(y, n_classes).float()
    opt = torch.optim.Adam([w, b], lr=0.01, weight_decay=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (1e-5 / 0.01) ** (s / steps))
    with torch.enable_grad():
        for _ in range(steps):
            logits = x @ w.T + b
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            if l1 > 0:
                loss = loss + l1 * w.abs().sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return w.detach(), b.detach()


def _f1(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = float((pred & truth).sum())
    return 0.0 if tp == 0 else 2 * tp / (float(pred.sum()) + float(truth.sum()))


class LetterResult(NamedTuple):
    letter: str
    probe_f1: float
    true_positives: int
    main_latents: list[int]
    absorption_fraction: float
    full_absorption: float


class Absorption(NamedTuple):
    mean_absorption_fraction: float
    mean_full_absorption: float
    mean_split_features: float
    letters: list[LetterResult]


def main_latents(
    f_train: Tensor, y_train: Tensor, f_test: Tensor, y_test: Tensor, max_k: int = 10, jump: float = 0.03
) -> list[list[int]]:
    """Per letter, the latents of the last k-sparse probe whose test F1 rose by more than ``jump``
    over the previous k (SAEBench's feature splits). f_* (N, n) latent activations."""
    from sklearn.linear_model import LogisticRegression

    w, _ = train_probe(f_train, y_train, len(LETTERS), steps=50, l1=0.01)
    out = []
    for c in range(len(LETTERS)):
        truth_tr, truth_te = (y_train == c).numpy(), (y_test == c).numpy()
        best, chosen = -100.0, []
        for k in range(1, max_k + 1):
            feats = w[c].topk(k).indices
            if truth_tr.all() or not truth_tr.any():
                break
            clf = LogisticRegression(max_iter=500, class_weight="balanced")
            clf.fit(f_train[:, feats].numpy(), truth_tr)
            f1 = _f1(clf.decision_function(f_test[:, feats].numpy()) > 0, truth_te)
            if f1 <= best + jump:
                break
            best, chosen = f1, feats.tolist()
        out.append(chosen)
    return out


def absorption(
    encode: Callable[[Tensor], Tensor],
    W_dec: Tensor,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    probe: tuple[Tensor, Tensor],
    min_true_positives: int = 10,
    min_probe_f1: float = 0.6,
) -> Absorption:
    """SAEBench's absorption scores of a dictionary (``encode``: raw activations (N, d) -> latents
    (N, n); ``W_dec`` (d, n)) against the ground-truth ``probe`` (weights (26, d), bias (26,)),
    from word activations x_* (N, d) and their first letters y_* (N,)."""
    f_train, f_test = encode(x_train).float(), encode(x_test).float()
    mains = main_latents(f_train, y_train, f_test, y_test)
    pw, pb = probe
    scores = x_test @ pw.T + pb  # (N, 26)
    dec = W_dec / W_dec.norm(dim=0, keepdim=True)
    rows = []
    for c, letter in enumerate(LETTERS):
        truth = y_test == c
        f1 = _f1((scores[:, c] > 0).numpy(), truth.numpy())
        hits = (truth & (scores[:, c] > 0)).nonzero().flatten()
        if f1 < min_probe_f1 or len(hits) < min_true_positives:
            continue
        p = pw[c] / pw[c].norm()
        cos = p @ dec  # (n,)
        main = torch.tensor(mains[c], dtype=torch.long)
        fractions, fulls = [], []
        for i in hits.tolist():
            acts = f_test[i]
            proj = acts * cos  # each latent's projection onto p
            total = float(x_test[i] @ p)
            main_proj = float(proj[main].sum())
            others = torch.ones_like(cos, dtype=torch.bool)
            others[main] = False
            others &= (cos >= 0.1) & (proj > 0)
            absorbing = float(proj[others].topk(min(3, int(others.sum()))).values.sum())
            if total <= 0 or main_proj >= total or absorbing / total < 0.4:
                fraction = 0.0
            elif main_proj <= 0:
                fraction = 1.0
            else:
                absorbed = min(absorbing, total - main_proj)
                fraction = min(max(absorbed / (absorbed + main_proj), 0.0), 1.0)
            top = int(proj.argmax())
            full = (
                bool((acts[main] < 1e-8).all())
                and float(cos[top]) >= 0.025
                and total > 0
                and float(proj[top]) / total >= 0.4
            )
            fractions.append(fraction)
            fulls.append(float(full))
        rows.append(
            LetterResult(letter, f1, len(hits), mains[c], float(np.mean(fractions)), float(np.mean(fulls)))
        )
    if not rows:
        raise ValueError("no letter has a probe good enough to measure absorption: use more words")
    return Absorption(
        float(np.mean([r.absorption_fraction for r in rows])),
        float(np.mean([r.full_absorption for r in rows])),
        float(np.mean([len(r.main_latents) for r in rows])),
        rows,
    )
