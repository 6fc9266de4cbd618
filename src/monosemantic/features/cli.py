"""The feature commands of ``monosemantic``: analyze, feature, search (registered on the main app
by ``monosemantic.cli``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from monosemantic.cli import RUN, _load_lm, _opt
from monosemantic.config import AnalyzeConfig, load_stage, record_stage, resolve_device
from monosemantic.errors import UserError

SAE = typer.Option("", "--sae", help="dictionary, e.g. relu-2048 (default: the largest analysed one)")


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist: give the --out of an earlier harvest/train")


def run_analyze(run: Path, cfg: AnalyzeConfig, force: bool = False) -> dict:
    from monosemantic.features.analyze import analyze

    _check_run(run)
    harvest = load_stage(run, "harvest")
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
    import torch

    from monosemantic.dictionary import load_dictionary
    from monosemantic.features import db
    from monosemantic.features.card import card
    from monosemantic.features.neighbors import nearest, unit_directions

    _check_run(run)
    con = db.open_db(run)
    try:
        name = pick_sae(con, run, sae)
        db.feature_row(con, name, feature)  # a clear error for an unknown id before loading anything
        near: list[tuple[int, float]] = []
        if neighbors > 0:
            dirs = unit_directions(load_dictionary(run / "saes" / name)[0].W_dec)
            cos, idx = nearest(dirs, torch.tensor([feature]), dirs, neighbors, same=True)
            near = list(zip(idx[0].tolist(), cos[0].tolist(), strict=True))
        Console(highlight=False).print(card(con, name, feature, n_top=top, neighbors=near))
    finally:
        con.close()


def register(app: typer.Typer) -> None:
    app.command("analyze")(analyze_cmd)
    app.command("feature")(feature_cmd)
