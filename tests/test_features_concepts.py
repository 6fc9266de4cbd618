"""The concept list, the search rankings that use corpus occurrences and top contexts, the
fuzzing scorer and the lexicon explainer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from monosemantic.errors import UserError
from monosemantic.features.concepts import count_occurrences, form_pattern, load_concepts
from monosemantic.features.explain import fuzz_pairs, row_auc
from monosemantic.features.label import Entry, Labeler, lexicon, self_positives
from monosemantic.features.scorers import Embedder
from monosemantic.features.search import rank
from tests.helpers import needs_minilm, synthetic_contexts


def test_bundled_concept_list_is_broad_and_well_formed() -> None:
    concepts = load_concepts()
    assert len(concepts) >= 100 and len({c.kind for c in concepts}) >= 10
    assert len({c.name for c in concepts}) == len(concepts)
    france = next(c for c in concepts if c.name == "France")
    assert france.kind == "country" and "French" in france.forms


def test_bad_concept_row_says_where(tmp_path) -> None:
    path = tmp_path / "c.tsv"
    path.write_text("# comment\nParis\tcity\nBerlin\n")
    with pytest.raises(UserError, match=r"c.tsv:3"):
        load_concepts(path)


def test_forms_match_whole_words_in_spaced_scripts_only() -> None:
    pat = form_pattern(["Paris", "的"])
    assert pat.search("to paris.") and not pat.search("a comparison")
    assert pat.search("我的书")  # no word boundaries in Chinese
    paris = next(c for c in load_concepts() if c.name == "Paris")
    assert count_occurrences(["Paris, Paris", "comparison", "PARIS"], [paris]) == {"Paris": (3, 2)}


def _stats(n: int) -> dict[str, np.ndarray]:
    return {
        "freq": np.full(n, 0.01),
        "max_act": np.ones(n),
        "mean_act": np.ones(n),
        "n_fired": np.full(n, 100.0),
    }


def test_corpus_ranking_ignores_the_bare_query_when_the_corpus_has_the_concept() -> None:
    # feature 0 fires only on the bare query (first row), feature 1 weakly on the corpus passage
    acts = torch.tensor([[1.0, 0.0], [0.0, 0.3]])
    spans, is_query = [1, 1], [True, False]
    assert rank(acts, spans, _stats(2), {}, 2)[0].feature == 0
    assert rank(acts, spans, _stats(2), {}, 2, is_query=is_query, method="corpus")[0].feature == 1
    # with only the query there is nothing else to go by
    only = rank(acts[:1], [1], _stats(2), {}, 2, is_query=[True], method="corpus")
    assert only[0].feature == 0


def test_context_ranking_prefers_features_whose_top_contexts_hold_the_query() -> None:
    acts = torch.tensor([[1.0, 0.8], [1.0, 0.8]])
    assert rank(acts, [1, 1], _stats(2), {}, 2, method="corpus+contexts")[0].feature == 0
    hits = rank(acts, [1, 1], _stats(2), {1: 0.5}, 2, method="corpus+contexts")
    assert [h.feature for h in hits] == [1, 0] and hits[0].context_precision == 0.5
    with pytest.raises(ValueError, match="ranking"):
        rank(acts, [1, 1], _stats(2), {}, 2, method="nope")


def test_fuzzing_pairs_highlight_firing_tokens_against_random_quiet_ones() -> None:
    contexts = synthetic_contexts("paris", 5)
    correct, fuzzed = fuzz_pairs(contexts, seed=1)
    assert len(correct) == len(fuzzed) == 5
    assert all("paris" in t for t in correct) and not any("paris" in t for t in fuzzed)
    assert fuzz_pairs(contexts, seed=1) == (correct, fuzzed)  # seeded


def test_lexicon_holds_wordnet_entries_and_concepts() -> None:
    entries = lexicon()
    assert 10_000 < len(entries) < 30_000  # the corpus holds all 117k WordNet synsets: a bounded share
    assert any(e.head.startswith("Einstein (") and "einstein" in e.names for e in entries)
    assert any(e.text == "SQL injection (security)" for e in entries)
    assert any(e.text == "France (country)" and "french" in e.names for e in entries)


@needs_minilm
def test_lexicon_explainer_names_the_entry_that_matches_the_firing_windows() -> None:
    embedder = Embedder()
    entries = [Entry("capital city", "Paris, the capital city of France"), Entry("fish", "a trout or salmon")]
    labeler = Labeler(embedder, entries, embedder.embed([e.text for e in entries]))
    contexts = synthetic_contexts("paris", 20)
    base = Counter({" the": 1000, " paris": 1})
    text = labeler.explain(contexts, base, sum(base.values()))
    assert text.startswith('capital city: fires on " paris"'), text
    far = Labeler(embedder, entries[1:], embedder.embed([entries[1].text]))
    assert far.explain(contexts, base, sum(base.values())).startswith('fires on " paris"')


def test_row_auc_matches_the_pairwise_auc_row_by_row() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1, 1, (5, 7)), rng.normal(0, 1, (5, 11))
    pos[0, 0] = neg[0, 0]  # a tie counts half
    direct = [
        sum((a > b) + 0.5 * (a == b) for a in p for b in n) / (len(p) * len(n))
        for p, n in zip(pos, neg, strict=True)
    ]
    assert row_auc(pos, neg) == pytest.approx(direct)


def test_self_positives_spread_over_every_firing_token_weak_ones_too() -> None:
    contexts = synthetic_contexts("paris", 3)
    for c in contexts:
        c.acts[1] = 0.5  # a weak firing token beside the peak
    windows = self_positives(contexts, n=4, width=1)
    assert len(windows) == 4  # 6 firing tokens, 4 kept evenly from weakest to strongest
    assert sum(" paris" in w for w in windows) >= 2 and any(" paris" not in w for w in windows)


@needs_minilm
def test_self_scored_lexicon_explainer_keeps_an_entry_only_when_it_tells_firing_text_apart() -> None:
    embedder = Embedder()
    entries = [Entry("capital city", "Paris, the capital city of France"), Entry("fish", "a trout or salmon")]
    contexts = synthetic_contexts("paris", 20)
    base = Counter({" the": 1000, " paris": 1})
    texts = [" the cat sat on the mat", " a trout swims in the river", " numbers add up to ten"] * 5
    labeler = Labeler(embedder, entries, embedder.embed([e.text for e in entries]))
    labeler = labeler.with_background(list(enumerate(texts)))
    assert labeler.background is not None and labeler.background.shape == (15, 384)
    assert labeler._background({0, 1, 2}).shape == (12, 384)  # windows of the scoring sequences left out
    text = labeler.explain(contexts, base, sum(base.values()), avoid={0})
    # the Paris entry, or the plain token list when the entry would not help: never the fish
    assert text.startswith(('capital city: fires on " paris"', 'fires on " paris"')), text
    assert labeler.best_entry(contexts)[0].head == "capital city"
    # an empty background means the nearest entry without a self-score, as before
    nearest = Labeler(embedder, entries, labeler.emb, np.zeros((0, 384)))
    assert nearest.explain(contexts, base, sum(base.values())).startswith('capital city: fires on " paris"')


@needs_minilm
def test_lexicon_explainer_can_choose_among_the_entries_a_firing_token_names(monkeypatch) -> None:
    from monosemantic.features import label

    monkeypatch.setattr(label, "NAMED_FIRST", True)
    embedder = Embedder()
    entries = [
        Entry("capital city", "a capital city of a country"),
        Entry("Paris (the capital of France)", "Paris (noun): the capital of France", ("paris",)),
        Entry("fish", "a trout or salmon", ("fish",)),
    ]
    texts = [" the cat sat on the mat", " a trout swims in the river", " numbers add up to ten"] * 5
    labeler = Labeler(embedder, entries, embedder.embed([e.text for e in entries]))
    labeler = labeler.with_background(list(enumerate(texts)))
    assert labeler.named == {"paris": [1], "fish": [2]}
    contexts = synthetic_contexts("paris", 20)
    assert labeler.background is not None
    entry = labeler._choose(contexts, labeler.background, [" paris"])[0]
    assert entry.head.startswith("Paris")
