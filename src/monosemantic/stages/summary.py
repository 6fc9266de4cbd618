"""The demo's closing summary: what a newcomer reads at a glance (the dictionaries' metrics, a few
concept features with their explanation and strongest context, where the report is, and what to
try next)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from monosemantic.config import ExplainConfig

DEMO_CONCEPTS = ("password", "Python", "God")
"""Concepts the summary looks up with ``search``: a security term, a programming language, a
religious name. Each has a feature whose top contexts contain it (70-100% of them) on a fresh demo
run of the broadened corpus (docs/data.md); the earlier choices France and und had such features
on the old corpus only, where the country profiles and German handbook chapters made up more of
the demo's 200k tokens."""


class ConceptFeature(NamedTuple):
    concept: str
    sae: str
    feature: int
    explanation: str
    context: str
    """The feature's strongest context around its peak token, which is in [brackets]."""


class DemoSummary(NamedTuple):
    metrics: dict[str, dict[str, Any]]
    """dictionary name -> its metrics.json"""
    concepts: list[ConceptFeature]
    """Those of ``DEMO_CONCEPTS`` for which search found a feature (may be empty)."""
    report: Path
    run: Path


def run_demo_summary(run: Path, metrics: dict[str, dict[str, Any]], report: Path, lm: Any) -> DemoSummary:
    """Search each of ``DEMO_CONCEPTS`` in the largest analysed dictionary, explain the first
    feature of each (offline, into the database) and gather what the summary shows."""
    from monosemantic.features import db
    from monosemantic.stages.features import run_explain, run_search

    found = []
    for concept in DEMO_CONCEPTS:
        result = run_search(run, concept, top=1, lm=lm)
        if result.hits:
            found.append((concept, result.sae, result.hits[0].feature, result.snippets[0]))
    out = []
    for sae in dict.fromkeys(s for _, s, _, _ in found):
        ids = [f for _, s, f, _ in found if s == sae]
        explained = {
            r.feature: r.explanation for r in run_explain(run, ExplainConfig(sae=sae, ids=ids)).results
        }
        con = db.open_db(run, readonly=True)
        try:
            for concept, s, f, snippet in found:
                if s == sae:
                    text = explained.get(f) or db.feature_row(con, sae, f)["explanation"] or "(not explained)"
                    out.append(ConceptFeature(concept, sae, f, text, snippet))
        finally:
            con.close()
    order = {c: i for i, c in enumerate(DEMO_CONCEPTS)}
    return DemoSummary(metrics, sorted(out, key=lambda c: order[c.concept]), report, run)
