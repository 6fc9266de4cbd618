"""The feature commands of ``monosemantic``: analyze, feature, search (registered on the main app
by ``monosemantic.cli``)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table

from monosemantic.bounds import check_float, check_int, check_seed
from monosemantic.cli import RUN, _load_lm, _opt
from monosemantic.config import AnalyzeConfig, load_stage, record_stage, resolve_device
from monosemantic.errors import UserError

SAE = typer.Option("", "--sae", help="dictionary, e.g. relu-2048 (default: the largest analysed one)")


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist: give the --out of an earlier harvest/train")


def run_analyze(run: Path, cfg: AnalyzeConfig, force: bool = False) -> dict:
    from monosemantic.features.analyze import analyze, check_inputs

    _check_run(run)
    harvest = load_stage(run, "harvest")
    check_inputs(run, cfg)  # before run.toml is written
    record_stage(run, "analyze", cfg, force=True)
    lm = _load_lm(harvest.model, cfg.device, harvest.dtype)
    summaries = analyze(run, cfg, lm, force=force, device=resolve_device(cfg.device))
    table = Table(title=f"features in {run / 'features.sqlite'}")
    for col in ("dictionary", "features", "tokens", "dead %", "tokens/s", "seconds", "peak RSS MiB"):
        table.add_column(col, justify="right")
    for name, s in summaries.items():
        table.add_row(
            name,
            f"{s['n_features']:,}",
            f"{s['n_tokens']:,}",
            f"{100 * s['dead_fraction']:.1f}",
            f"{s['tokens_per_s']:,.0f}",
            f"{s['seconds']:.0f}",
            f"{s['peak_rss_mb']:,.0f}",
        )
    Console().print(table)
    return summaries


def analyze_cmd(
    run: Path = RUN,
    sae: str = _opt(AnalyzeConfig, "sae", "--sae"),
    corpus: str = _opt(AnalyzeConfig, "corpus", "--corpus"),
    tokens: int = _opt(AnalyzeConfig, "n_tokens", "--tokens"),
    top_k: int = _opt(AnalyzeConfig, "top_k", "--top-k"),
    samples: int = _opt(AnalyzeConfig, "n_samples", "--samples"),
    quantiles: int = _opt(AnalyzeConfig, "n_bands", "--quantiles"),
    random: int = _opt(AnalyzeConfig, "n_random", "--random"),
    before: int = _opt(AnalyzeConfig, "before", "--before"),
    after: int = _opt(AnalyzeConfig, "after", "--after"),
    batch_size: int = _opt(AnalyzeConfig, "batch_size", "--batch-size"),
    checkpoint_every: int = _opt(AnalyzeConfig, "checkpoint_every", "--checkpoint-every"),
    seed: int = _opt(AnalyzeConfig, "seed", "--seed"),
    device: str = _opt(AnalyzeConfig, "device", "--device"),
    force: bool = typer.Option(False, "--force", help="discard earlier analyses of these dictionaries"),
) -> None:
    """Record every feature's statistics, top and quantile-sampled contexts, and logit effects in
    RUN/features.sqlite (one pass; resumes after an interruption)."""
    cfg = AnalyzeConfig(
        sae=sae,
        corpus=corpus,
        n_tokens=tokens,
        top_k=top_k,
        n_samples=samples,
        n_bands=quantiles,
        n_random=random,
        before=before,
        after=after,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        seed=seed,
        device=device,
    )
    run_analyze(run, cfg, force)


def pick_sae(con: sqlite3.Connection, run: Path, sae: str) -> str:
    """The dictionary named, or the largest analysed one."""
    from monosemantic.features import db

    done = db.analysed_saes(con)
    if sae:
        if sae not in done:
            have = ", ".join(done) or "none"
            raise UserError(
                f"{sae} is not analysed in {run} (analysed: {have}): "
                f"run `monosemantic analyze {run} --sae {sae}`"
            )
        return sae
    if not done:
        raise UserError(f"{run} has no analysed dictionary: run `monosemantic analyze {run}` first")
    sizes = {
        name: int(con.execute("SELECT count(*) FROM features WHERE sae = ?", (name,)).fetchone()[0])
        for name in done
    }
    return max(done, key=lambda name: (sizes[name], name))


def feature_cmd(
    run: Path = RUN,
    feature: int = typer.Argument(..., help="feature id"),
    sae: str = SAE,
    top: int = typer.Option(8, "--top", help="top contexts to show"),
    neighbors: int = typer.Option(5, "--neighbors", help="nearest features by decoder cosine to list"),
) -> None:
    """Print one feature's card: statistics, explanation, histogram, contexts, logit effects, neighbours."""
    from monosemantic.features import db
    from monosemantic.features.card import card
    from monosemantic.features.neighbors import neighbors_of

    check_int("FEATURE", feature, 0)
    check_int("--top", top, 0)
    check_int("--neighbors", neighbors, 0)
    _check_run(run)
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, sae)
        db.feature_row(con, name, feature)
        near = (
            {k: v[:neighbors] for k, v in neighbors_of(con, name, feature).items()} if neighbors > 0 else {}
        )
        Console(highlight=False).print(card(con, name, feature, n_top=top, neighbors=near))
    finally:
        con.close()


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
    from rich.tree import Tree

    from monosemantic.activations import ActivationStore
    from monosemantic.dictionary import load_dictionary
    from monosemantic.features.family import Node, family_tree

    check_int("FEATURE", feature, 0)
    check_int("--k", k, 1)
    check_float("--min-cosine", min_cosine, -1.0, 1.0)
    _check_run(run)
    names = sorted(
        (p.parent.name for p in (run / "saes").glob(f"{arch}-*/sae.safetensors")),
        key=lambda n: int(n.split("-")[-1]),
    )
    if sae:
        if sae not in names:
            raise UserError(f"{run} has no {arch} dictionary {sae!r} (it has: {', '.join(names) or 'none'})")
        names = names[names.index(sae) :]
    if len(names) < 2:
        raise UserError(f"{run} needs two or more {arch} dictionaries of different sizes for a family tree")
    chain = [(n, load_dictionary(run / "saes" / n)[0]) for n in names]
    if not 0 <= feature < chain[0][1].n_features:
        raise UserError(
            f"{names[0]} has no feature {feature}: ids run from 0 to {chain[0][1].n_features - 1}"
        )
    store = ActivationStore(run)
    sample = torch.cat(list(store.iter_split("eval")))[:20_000]
    tree = family_tree(chain, feature, sample, k=k, min_cosine=min_cosine)

    def add(branch: Tree, node: Node) -> None:
        for c in node.children:
            label = f"{c.sae} #{c.feature}  cos {c.cosine:.2f}  P(fires | parent) {c.coactivation:.2f}"
            add(branch.add(label), c)

    root = Tree(f"{tree.sae} #{tree.feature}")
    add(root, tree)
    Console(highlight=False).print(root)


def _snippet(con: sqlite3.Connection, sae: str, feature: int, words: list[bytes], width: int = 60) -> str:
    """The feature's strongest context, cut around its peak token, on one line."""
    from monosemantic.features import db

    top = db.contexts(con, sae, feature, "top", words)[:1]
    if not top:
        return ""
    spans = top[0].spans()  # whole characters, where one is split over several tokens
    i = next((k for k, (_, _, positions) in enumerate(spans) if top[0].peak in positions), 0)
    texts = [t for t, _, _ in spans]
    left, peak, right = "".join(texts[:i]), texts[i] if texts else "", "".join(texts[i + 1 :])
    text = f"{left[-(width // 2) :]}[{peak}]{right[: width // 3]}"
    return text.replace("\n", "⏎")


def _corpus_texts(run: Path, con: sqlite3.Connection, sae: str, harvest_corpus: str) -> Iterator[str]:
    """The documents of the corpus the analysis read (the harvest's corpus for the store), when
    they are local: search scans them for more passages than the analysis stored."""
    from monosemantic.corpus import load_texts
    from monosemantic.features import db

    row = db.analysis(con, sae)
    spec = json.loads(row["config"])["corpus"] if row is not None else "store"
    spec = harvest_corpus if spec.startswith("store") else spec
    return iter(()) if spec.startswith("hf:") else load_texts(spec)


def search_cmd(
    run: Path = RUN,
    query: str = typer.Argument(..., help="text about the concept: a name, a phrase, code, any language"),
    sae: str = SAE,
    top: int = typer.Option(10, "--top", help="features to list"),
    matches: int = typer.Option(32, "--matches", help="corpus passages containing the query to use, at most"),
) -> None:
    """Rank features by how strongly and specifically they fire on QUERY: on the query text and on
    the analysed corpus's passages containing it, against each feature's base rate; and list the
    features whose explanations match it."""
    from monosemantic.dictionary import load_dictionary
    from monosemantic.features import db
    from monosemantic.features.search import fts_phrase, search

    check_int("--top", top, 1)
    check_int("--matches", matches, 0)
    _check_run(run)
    if not query.strip():
        raise UserError("the search query is empty: give some text, e.g. 'SQL injection'")
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, sae)
        harvest = load_stage(run, "harvest")
        sae_module, cfg = load_dictionary(run / "saes" / name)
        lm = _load_lm(harvest.model, "cpu", harvest.dtype)
        texts = _corpus_texts(run, con, name, harvest.corpus)
        hits, occs = search(
            con, lm, int(cfg["layer"]), name, sae_module, query, max_matches=matches, top=top, texts=texts
        )
        words = db.vocab(con)
        n_corpus = sum(o.source != "query" for o in occs)
        table = Table(
            title=f"{name}: features for {query!r} (the query text + {n_corpus} corpus passages)",
            caption="score = strength x log2(lift); strength: activation on the query span / the "
            "feature's max; hit: share of occurrences it fires on; top ctx: share of its top contexts "
            "containing the query",
        )
        for col in ("feature", "score", "strength", "hit", "lift", "freq %", "top ctx", "strongest context"):
            table.add_column(col, justify="left" if col == "strongest context" else "right")
        for h in hits:
            table.add_row(
                str(h.feature),
                f"{h.score:.2f}",
                f"{h.strength:.2f}",
                f"{h.hit_rate:.2f}",
                f"{h.lift:,.0f}",
                f"{100 * h.freq:.3f}",
                f"{h.context_precision:.2f}",
                _snippet(con, name, h.feature, words),
            )
        Console(highlight=False, width=max(Console().width, 160)).print(table)
        explained = db.search_explanations(con, name, fts_phrase(query), top)
        if explained:
            Console(highlight=False).print(
                "explanations mentioning it: " + "; ".join(f"#{j} {text}" for j, text in explained)
            )
    finally:
        con.close()


def explain_cmd(
    run: Path = RUN,
    sae: str = SAE,
    features: int = typer.Option(
        100, "--features", help="live features to explain, drawn at random (0 = all)"
    ),
    ids: str = typer.Option("", "--ids", help="explain these features instead, e.g. 5116,12416"),
    explainer_url: str = typer.Option(
        "",
        "--explainer-url",
        help="OpenAI-compatible endpoint (e.g. http://localhost:8080/v1) to explain "
        "and score with an LLM; default: offline contrastive tokens scored with MiniLM embeddings",
    ),
    llm_model: str = typer.Option("default", "--llm-model", help="model name sent to --explainer-url"),
    seed: int = typer.Option(0, "--seed", help="seed of the random choice of features"),
) -> None:
    """Explain features from their top contexts and score each explanation by how well it tells
    held-out activating contexts from non-activating ones (detection AUC, balanced accuracy)."""
    check_int("--features", features, 0, hint=" (0 = all)")
    check_seed("--seed", seed)
    try:
        id_list = [int(x) for x in ids.split(",") if x.strip()]
    except ValueError as e:
        raise UserError(f"--ids {ids!r} must be comma-separated feature ids") from e
    if not run_explain(run, sae, features, id_list, explainer_url, llm_model, seed):
        raise UserError(
            f"none of the {len(id_list) or features or 'live'} features chosen has contexts to explain: "
            "analyze more tokens"
        )


def run_explain(
    run: Path,
    sae: str = "",
    features: int = 100,
    ids: list[int] | None = None,
    explainer_url: str = "",
    llm_model: str = "default",
    seed: int = 0,
) -> list[Any]:
    """Explain and score the features; prints a table, returns the scored ones (none when no
    chosen feature has held-out contexts)."""
    from monosemantic.features import db
    from monosemantic.features.explain_run import choose_features, explain_features
    from monosemantic.features.scorers import ChatClient, Embedder

    _check_run(run)
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, sae)
        chosen = choose_features(con, name, features, ids or [], seed)
        client = ChatClient(explainer_url, llm_model) if explainer_url else None
        embedder = None if client is not None else Embedder()
        results = explain_features(con, name, chosen, embedder=embedder, client=client)
    finally:
        con.close()
    if not results:
        return []
    aucs = np.array([r.auc for r in results])
    baccs = np.array([r.balanced_accuracy for r in results])
    table = Table(
        title=f"{name}: {len(results)} explanations, detection AUC mean {np.nanmean(aucs):.3f} "
        f"(median {np.nanmedian(aucs):.3f}), balanced accuracy mean {np.nanmean(baccs):.3f}"
    )
    for col in ("feature", "AUC", "bal. acc.", "explanation"):
        table.add_column(col, justify="left" if col == "explanation" else "right")
    for r in sorted(results, key=lambda r: -r.auc)[:15]:
        table.add_row(str(r.feature), f"{r.auc:.2f}", f"{r.balanced_accuracy:.2f}", r.explanation)
    Console(highlight=False).print(table)
    return results


def _ranked(entries: list) -> list[tuple[int, Any]]:
    """(rank within its probe set, entry); entries come best first within each set."""
    seen: dict[str, int] = {}
    out = []
    for e in entries:
        out.append((seen.get(e.probe_set, 0), e))
        seen[e.probe_set] = seen.get(e.probe_set, 0) + 1
    return out


def catalog_cmd(
    run: Path = RUN,
    sae: str = SAE,
    probes: Path = typer.Option(
        None, "--probes", help="probe sets, .jsonl of {set, label 1/0, text} (default: the bundled catalog)"
    ),
    top: int = typer.Option(10, "--top", help="features kept per probe set"),
) -> None:
    """Rank, for each labelled probe set (vulnerable vs safe code, biased vs neutral, deceptive vs
    honest, people, cities, languages), the features most specific to it; into the database."""
    check_int("--top", top, 1)
    run_catalog(run, sae, probes, top)


def run_catalog(run: Path, sae: str = "", probes: Path | None = None, top: int = 10) -> None:
    from monosemantic.dictionary import load_dictionary
    from monosemantic.features import db
    from monosemantic.features.catalog import DEFAULT_PROBES, build_catalog, load_probes

    _check_run(run)
    sets = load_probes(probes or DEFAULT_PROBES)
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, sae)
        harvest = load_stage(run, "harvest")
        sae_module, cfg = load_dictionary(run / "saes" / name)
        lm = _load_lm(harvest.model, "cpu", harvest.dtype)
        max_act = torch.as_tensor(db.feature_stats(con, name)["max_act"], dtype=torch.float32)
        entries = build_catalog(lm, int(cfg["layer"]), sae_module, sets, max_act, top)
        with db.transaction(con):
            con.execute("DELETE FROM catalog WHERE sae = ?", (name,))
            con.executemany(
                "INSERT INTO catalog VALUES (?, ?, ?, ?, ?, ?)",
                [(e.probe_set, name, e.feature, rank, e.score, e.auc) for rank, e in _ranked(entries)],
            )
        words = db.vocab(con)
        table = Table(title=f"{name}: features most specific to each probe set")
        for col in ("probe set", "feature", "score", "AUC", "explanation / strongest context"):
            table.add_column(
                col, justify="left" if col in ("probe set", "explanation / strongest context") else "right"
            )
        for s in sets:
            for e in [e for e in entries if e.probe_set == s.name][:3]:
                expl = db.feature_row(con, name, e.feature)["explanation"] or _snippet(
                    con, name, e.feature, words
                )
                table.add_row(s.name, str(e.feature), f"{e.score:.3f}", f"{e.auc:.2f}", expl)
        Console(highlight=False, width=max(Console().width, 140)).print(table)
    finally:
        con.close()


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("feature")(feature_cmd)
    app.command("search")(search_cmd)
    app.command("family")(family_cmd)
    app.command("explain")(explain_cmd)
    app.command("catalog")(catalog_cmd)
