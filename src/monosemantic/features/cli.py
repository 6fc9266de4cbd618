"""The feature commands of ``monosemantic`` (analyze, feature, search, family, explain, catalog),
registered on the main app by ``monosemantic.cli``: declarations only; the work is in
``stages/features.py``."""

from __future__ import annotations

from pathlib import Path

import typer

from monosemantic import terminal
from monosemantic.config import AnalyzeConfig, CatalogConfig, ExplainConfig
from monosemantic.errors import UserError
from monosemantic.options import RUN, SAE, ConfigOptions, config_options
from monosemantic.stages import features as stages


@config_options(AnalyzeConfig)
def analyze_cmd(
    cfg: ConfigOptions[AnalyzeConfig],
    run: Path = RUN,
    force: bool = typer.Option(False, "--force", help="discard earlier analyses of these dictionaries"),
) -> None:
    """Record every feature's statistics, top and quantile-sampled contexts, and logit effects in
    RUN/features.sqlite (one pass; resumes after an interruption)."""
    terminal.analyze_done(run, stages.run_analyze(run, cfg.build(), force))


def feature_cmd(
    run: Path = RUN,
    feature: int = typer.Argument(..., help="feature id"),
    sae: str = SAE,
    top: int = typer.Option(8, "--top", help="top contexts to show"),
    neighbors: int = typer.Option(5, "--neighbors", help="nearest features by decoder cosine to list"),
) -> None:
    """Print one feature's card: statistics, explanation, histogram, contexts, logit effects, neighbours."""
    terminal.show(stages.feature_card(run, feature, sae, top, neighbors))


def family_cmd(
    run: Path = RUN,
    feature: int = typer.Argument(..., help="feature id in the smallest dictionary (or --sae)"),
    sae: str = typer.Option(
        "", "--sae", help="the root's dictionary (default: the smallest of its architecture)"
    ),
    arch: str = typer.Option("relu", "--arch", help="architecture whose sizes form the family"),
    k: int = typer.Option(3, "--k", help="children per feature, at most"),
    min_cosine: float = typer.Option(0.3, "--min-cosine", help="decoder cosine a child needs"),
) -> None:
    """Show how a feature splits across the run's larger dictionaries: children by decoder cosine,
    with P(child fires | parent fires) on held-out activations."""
    terminal.family(stages.run_family(run, feature, sae, arch, k, min_cosine))


def search_cmd(
    run: Path = RUN,
    query: str = typer.Argument(..., help="text about the concept: a name, a phrase, code, any language"),
    sae: str = SAE,
    top: int = typer.Option(10, "--top", help="features to list"),
    matches: int = typer.Option(32, "--matches", help="corpus passages containing the query to use, at most"),
    semantic: bool = typer.Option(
        True, "--semantic/--no-semantic", help="rerank the best 20 by meaning (MiniLM), when installed"
    ),
) -> None:
    """Rank features by how strongly and specifically they fire on QUERY: on the query text and on
    the analysed corpus's passages containing it, against each feature's base rate; and list the
    features whose explanations match it."""
    terminal.search_results(query, stages.run_search(run, query, sae, top, matches, semantic=semantic))


@config_options(ExplainConfig)
def explain_cmd(cfg: ConfigOptions[ExplainConfig], run: Path = RUN) -> None:
    """Explain features from their top contexts and score each explanation by how well it tells
    held-out activating contexts from non-activating ones (detection AUC, balanced accuracy)."""
    ecfg = cfg.build()
    result = stages.run_explain(run, ecfg)
    if result.skipped:
        terminal.say(
            f"explain: {result.skipped} of the {result.chosen} features drawn with --seed {ecfg.seed} were "
            f"explained already (left as they are): --seed {ecfg.seed + 1} draws others, --again redoes them"
        )
    if not result.results:
        if result.skipped:  # the rest have no held-out contexts: nothing new to explain
            return
        raise UserError(
            f"none of the {len(ecfg.ids) or ecfg.n_features or 'live'} features chosen has contexts to "
            "explain: analyze more tokens"
        )
    terminal.explanations(result.sae, result.results)


@config_options(CatalogConfig)
def catalog_cmd(cfg: ConfigOptions[CatalogConfig], run: Path = RUN) -> None:
    """Rank, for each labelled probe set (vulnerable vs safe code, biased vs neutral, deceptive vs
    honest, people, cities, languages), the features most specific to it; into the database."""
    terminal.catalog(stages.run_catalog(run, cfg.build()))


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("feature")(feature_cmd)
    app.command("search")(search_cmd)
    app.command("family")(family_cmd)
    app.command("explain")(explain_cmd)
    app.command("catalog")(catalog_cmd)
