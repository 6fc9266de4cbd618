"""Explainer and scorers on synthetic data where the answer is known, and the LLM backend
against a local fake OpenAI-compatible server."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pytest

from monosemantic.features.explain import (
    auc,
    balanced_accuracy,
    best_threshold,
    detection_scores,
    explain_offline,
)
from monosemantic.features.scorers import ChatClient, Embedder, clean_explanation, llm_detect, llm_explain
from tests.helpers import FILLER, FakeLLM, fake_llm_server, needs_minilm, synthetic_contexts


def test_auc_and_balanced_accuracy_against_direct_counts() -> None:
    pos, neg = np.array([0.9, 0.8, 0.4]), np.array([0.5, 0.1])
    assert auc(pos, neg) == pytest.approx(5 / 6)  # 5 of the 6 (pos, neg) pairs are ordered right
    assert auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert balanced_accuracy(pos, neg, 0.6) == pytest.approx((2 / 3 + 1) / 2)
    assert best_threshold(pos, neg) == 0.8  # ties broken by the lowest threshold reaching the best


def test_detection_threshold_is_tested_on_negatives_it_was_not_tuned_on() -> None:
    top, held = np.array([0.9, 0.8]), np.array([0.7, 0.3])
    # even negatives (0.1, 0.2) set the threshold at 0.8; odd ones (0.85, 0.0) test it
    neg = np.array([0.1, 0.85, 0.2, 0.0])
    score_auc, bacc = detection_scores(top, held, neg)
    assert score_auc == pytest.approx(auc(held, neg))
    assert bacc == pytest.approx(balanced_accuracy(held, np.array([0.85, 0.0]), 0.8)) == 0.25
    # tuned and tested on the same negatives it would read 0.375 instead
    assert balanced_accuracy(held, neg, best_threshold(top, neg)) != bacc
    assert np.isnan(detection_scores(top, held, neg[:1])[1])


def test_contrastive_explainer_names_the_planted_token() -> None:
    base = Counter({" " + w: 1000 for w in FILLER})
    base.update({" paris": 3})
    text = explain_offline(synthetic_contexts("paris", 20), base, sum(base.values()))
    assert text.startswith('fires on " paris" (100%)'), text
    assert '" in" (100%)' in text  # the token before every peak
    assert explain_offline(synthetic_contexts("paris", 20)[:1], base, 10**5).startswith('fires on " paris"')


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder()


@needs_minilm
def test_embedding_scorer_prefers_the_right_explanation(embedder: Embedder) -> None:
    cities = [
        f"Last summer we flew to {c} and stayed near the old town."
        for c in ("Paris", "Rome", "Madrid", "Vienna", "Prague", "Lisbon")
    ]
    code = [
        f"def {n}(self, x):\n    return x + {i}"
        for i, n in enumerate(("add", "scale", "norm", "shift", "clip", "mean"))
    ]
    right = embedder.similarities("European capital cities", cities + code)
    wrong = embedder.similarities("Python function definitions", cities + code)
    assert auc(right[:6], right[6:]) == 1.0
    assert auc(wrong[:6], wrong[6:]) == 0.0
    vecs = embedder.embed(["one", "two"])
    assert vecs.shape == (2, 384) and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)


@pytest.fixture
def fake_llm() -> Iterator[str]:
    with fake_llm_server() as url:
        yield url


def test_llm_backend_explains_and_detects(fake_llm: str) -> None:
    client = ChatClient(fake_llm, "tiny")
    assert llm_explain(client, ["we went to <<paris>>"]) == "The word paris"
    # what SmolLM2-135M behind llama.cpp answered: an echo of the first excerpt, numbered and marked
    assert clean_explanation("\n1. 013); $8.809 billion (25<< December>> 2014\nmore") == (
        "013); $8.809 billion (25 December 2014"
    )
    assert clean_explanation('- "Dates in financial figures"') == "Dates in financial figures"
    pred = llm_detect(client, "The word paris", ["to paris again", "a buffer overflow", "Paris in spring"])
    assert pred.tolist() == [1.0, 0.0, 1.0]
    assert FakeLLM.requests[0]["model"] == "tiny" and FakeLLM.requests[0]["temperature"] == 0
