"""Steering a run's dictionary, measured: does the steered text carry the feature's concept?

For a set of neutral prompts (bundled: ``data/steer_prompts.txt``) we generate unsteered and
steered completions and read each back with the clean model (no edit):

    fire rate          share of completions on which the steered feature fires (activation > 0)
                       on at least one generated token, re-encoded by the dictionary
    strong fire rate   the same with activation ≥ ``STRONG`` × its max (a stricter reading of
                       "fires": a trace activation does not count)
    relative           mean over completions of the feature's largest activation on them / its max
    promoted log-mass  mean over generated positions of log Σ p(t), t over the feature's top
                       promoted tokens (its direct logit effects), under the clean model
    log-prob / token   mean clean-model log p of the generated tokens (fluency: lower = stranger)
    repetition         mean seq-rep-4 of the completions (fluency: a loop scores high log-probs)

Results go into the run's ``features.sqlite`` (table ``steering``, created when first needed) and
the report shows them.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from monosemantic.dictionary import load_dictionary
from monosemantic.errors import UserError
from monosemantic.features import db
from monosemantic.fsio import file_digest, fingerprint
from monosemantic.models import LoadedModel
from monosemantic.sae import SparseAutoencoder
from monosemantic.steer import GenerateConfig, Intervention, resolve
from monosemantic.steer_score import Completion, complete, promoted_tokens

STRONG = 0.1
"""The strong fire rate's threshold, a share of the feature's maximum activation."""
_ADDED = ("strong_fire_rate", "base_strong_fire_rate", "repetition", "base_repetition")
"""Columns added after the table first shipped (``store_effects`` adds them to an older table)."""

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "steer_prompts.txt"

_TABLE = """
CREATE TABLE IF NOT EXISTS steering (
  sae TEXT NOT NULL, feature INTEGER NOT NULL, mode TEXT NOT NULL, scale REAL NOT NULL,
  keep_error INTEGER NOT NULL, steered TEXT NOT NULL, settings TEXT NOT NULL,
  n_prompts INTEGER NOT NULL, fire_rate REAL NOT NULL, base_fire_rate REAL NOT NULL,
  relative REAL NOT NULL, base_relative REAL NOT NULL,
  promoted_logmass REAL, base_promoted_logmass REAL,
  logprob REAL NOT NULL, base_logprob REAL NOT NULL, example TEXT NOT NULL, base_example TEXT NOT NULL,
  completions TEXT NOT NULL, base_completions TEXT NOT NULL,
  strong_fire_rate REAL, base_strong_fire_rate REAL, repetition REAL, base_repetition REAL,
  PRIMARY KEY (sae, feature, mode, scale, keep_error, steered, settings))
"""


def load_prompts(path: Path | None = None) -> list[str]:
    """Prompts, one per line (blank lines and lines starting with # skipped)."""
    path = path or DEFAULT_PROMPTS
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(
            f"cannot read prompts from {path}: {e.strerror}: give a text file, one prompt a line"
        ) from e
    prompts = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"{path} holds no prompt: write one prompt per line")
    return prompts


@dataclass
class SteerTarget:
    """What steering one dictionary of a run needs, loaded once (the web app keeps one)."""

    lm: LoadedModel
    layer: int
    sae: SparseAutoencoder
    name: str
    max_act: Tensor
    """(n,) each feature's largest activation in the analysis."""
    digest: str
    """The dictionary file's digest (stored with results, so a retrained dictionary's are told apart)."""


def load_target(run: Path, sae: str, lm: LoadedModel, con: sqlite3.Connection | None = None) -> SteerTarget:
    """The analysed dictionary ``sae`` of ``run`` ('' = the largest analysed) with ``lm``; its
    statistics read through ``con`` when given (the web app's read-only connection, left open)."""
    own = con is None
    con = db.open_db(run, readonly=True) if con is None else con
    try:
        name = db.pick_sae(con, run, sae)
        max_act = torch.as_tensor(db.feature_stats(con, name)["max_act"], dtype=torch.float32)
    finally:
        if own:
            con.close()
    module, cfg = load_dictionary(run / "saes" / name)
    return SteerTarget(
        lm, int(cfg["layer"]), module, name, max_act, file_digest(run / "saes" / name / "sae.safetensors")
    )


def run_completions(
    t: SteerTarget,
    prompts: Sequence[str],
    interventions: Sequence[Intervention],
    cfg: GenerateConfig,
    watch: Sequence[int] = (),
    on_token: Callable[[int, int], None] | None = None,
) -> list[Completion]:
    """Completions of ``prompts`` steered by ``interventions`` (none: the clean model), scored
    against the ``watch`` features (default: the steered ones) and their promoted tokens;
    ``on_token(prompt index, token id)`` sees each token as it is generated."""
    edits = resolve(interventions, t.max_act)
    watch = list(watch) or list(dict.fromkeys(iv.feature for iv in interventions))
    resolve([Intervention(j, 0.0) for j in watch], t.max_act)  # an unknown id fails before any work
    promoted = promoted_tokens(t.lm, t.sae, watch)
    return complete(
        t.lm,
        t.layer,
        t.sae,
        t.max_act,
        prompts,
        edits,
        cfg,
        watch=watch,
        promoted=promoted,
        on_token=on_token,
    )


class Effect(NamedTuple):
    """The measured effect of steering at one scale, for one of the steered features."""

    feature: int
    mode: str
    scale: float
    keep_error: bool
    steered: list[int]
    """Every feature steered together in this run."""
    n_prompts: int
    fire_rate: float
    base_fire_rate: float
    relative: float
    base_relative: float
    promoted_logmass: float
    base_promoted_logmass: float
    logprob: float
    """Mean clean-model log p per generated token, steered."""
    base_logprob: float
    example: str
    """The first prompt and its steered completion."""
    base_example: str
    completions: list[str]
    """Every steered completion (without its prompt), in prompt order."""
    base_completions: list[str]
    strong_fire_rate: float = float("nan")
    """Share of completions on which the feature reaches ``STRONG`` × its max."""
    base_strong_fire_rate: float = float("nan")
    repetition: float = float("nan")
    """Mean seq-rep-4 of the steered completions (``steer_score.repetition``)."""
    base_repetition: float = float("nan")


def _mean(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def _per_token(cs: Sequence[Completion]) -> float:
    n = sum(c.n_tokens for c in cs)
    return sum(c.logprob for c in cs) / n if n else float("nan")


def measure(
    t: SteerTarget,
    features: Sequence[int],
    scales: Sequence[float],
    prompts: Sequence[str],
    cfg: GenerateConfig,
    mode: str = "clamp",
) -> list[Effect]:
    """Steer ``features`` together at each scale over ``prompts``; one Effect per (scale, feature),
    each against the same unsteered completions."""
    features = list(dict.fromkeys(features))
    resolve([Intervention(j, 0.0, mode) for j in features], t.max_act)  # bad ids fail before any work
    base = run_completions(t, prompts, [], replace(cfg, keep_error=True), watch=features)
    out = []
    for s in scales:
        steered = run_completions(t, prompts, [Intervention(j, s, mode) for j in features], cfg)
        for k, j in enumerate(features):
            out.append(
                Effect(
                    feature=j,
                    mode=mode,
                    scale=float(s),
                    keep_error=cfg.keep_error,
                    steered=features,
                    n_prompts=len(prompts),
                    fire_rate=_mean([float(c.fire_fraction[k] > 0) for c in steered]),
                    base_fire_rate=_mean([float(c.fire_fraction[k] > 0) for c in base]),
                    relative=_mean([c.max_relative[k] for c in steered]),
                    base_relative=_mean([c.max_relative[k] for c in base]),
                    promoted_logmass=_mean([c.promoted_logmass for c in steered]),
                    base_promoted_logmass=_mean([c.promoted_logmass for c in base]),
                    logprob=_per_token(steered),
                    base_logprob=_per_token(base),
                    example=steered[0].prompt + steered[0].text,
                    base_example=base[0].prompt + base[0].text,
                    completions=[c.text for c in steered],
                    base_completions=[c.text for c in base],
                    strong_fire_rate=_mean([float(c.max_relative[k] >= STRONG) for c in steered]),
                    base_strong_fire_rate=_mean([float(c.max_relative[k] >= STRONG) for c in base]),
                    repetition=_mean([c.repetition for c in steered]),
                    base_repetition=_mean([c.repetition for c in base]),
                )
            )
    return out


def settings_key(t: SteerTarget, prompts: Sequence[str], cfg: GenerateConfig) -> str:
    """What the numbers depend on besides feature, mode, scale and the error term."""
    return json.dumps(
        {
            "dictionary": t.digest,
            "prompts": fingerprint(list(prompts)),
            "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature,
            "seed": cfg.seed,
            "chat": cfg.chat,
            "steer_prompt": cfg.steer_prompt,
        },
        sort_keys=True,
    )


def store_effects(run: Path, sae: str, effects: Sequence[Effect], settings: str) -> None:
    """Insert (or replace) measured effects into ``run/features.sqlite``."""
    con = db.open_db(run)
    try:
        with db.transaction(con):
            con.execute(_TABLE)
            have = {r[1] for r in con.execute("PRAGMA table_info(steering)")}
            for column in _ADDED:
                if column not in have:
                    con.execute(f"ALTER TABLE steering ADD COLUMN {column} REAL")
            columns = ["sae", "settings", *Effect._fields]
            con.executemany(
                f"INSERT OR REPLACE INTO steering ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                [_row(sae, settings, e) for e in effects],
            )
    finally:
        con.close()


def _row(sae: str, settings: str, e: Effect) -> list[object]:
    """``e`` as the steering table stores it (lists as JSON, nan as NULL)."""
    values: list[object] = [sae, settings]
    for v in e:
        if isinstance(v, list):
            values.append(json.dumps(v))
        elif isinstance(v, bool):
            values.append(int(v))
        elif isinstance(v, float):
            values.append(_nan_none(v))
        else:
            values.append(v)
    return values


def _nan_none(x: float) -> float | None:
    return None if math.isnan(x) else x


def stored_effects(con: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every stored effect of a dictionary still analysed, by dictionary, feature, mode, error term
    and scale ([] if none)."""
    if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'steering'").fetchone() is None:
        return []
    return con.execute(
        "SELECT * FROM steering WHERE sae IN (SELECT sae FROM analyses WHERE finished = 1) "
        "ORDER BY sae, feature, steered, mode, keep_error DESC, settings, scale"
    ).fetchall()


DEMO_QUERIES = ("God", "northeastern", "Coastline")
"""Topics the demo looks for a feature to steer in, in order: the corpus's Bible and theology
glosses, then its WordNet and Factbook geography (docs/data.md). "God" finds a context feature on
both demo runs of docs/steering.md (the old corpus's mythology #14989, the new one's theology
#6733, which steers to 0.92 of the prompts against 0.08 unsteered at 1.5×)."""
DEMO_HITS = 10
"""How many of ``search``'s hits per query the demo considers."""
DEMO_SPREAD = 0.2
"""The least context spread (``context_spread``) of the feature the demo steers. Features that
steer fire over whole passages of their topic: on the old-corpus demo run the seven that steered had
a spread of 0.23-0.75 and the first search hits that did not (token detectors: the last token of a
city name, *und*, ``import``) 0.04-0.13; the median feature's is 0.06, the 90th percentile's 0.15
(docs/steering.md)."""
DEMO_SCALE = 1.5
"""The demo runs' context features turn the text at 1-1.5× their max; from 2× on it degrades."""
TOP_CONTEXTS = 10
"""How many of a feature's top contexts ``context_spread`` reads."""


def context_spread(con: sqlite3.Connection, sae: str, features: Sequence[int]) -> dict[int, float]:
    """Per feature, the share of tokens it fires on (activation > 0) in its first ``TOP_CONTEXTS``
    stored top-context windows: near 1/width for a detector of one token, high for a feature that
    fires over whole passages of a topic (the kind that steers; docs/steering.md). 0.0 for a
    feature with no stored contexts."""
    out = {int(j): 0.0 for j in features}
    for j in out:
        rows = con.execute(
            "SELECT acts FROM contexts WHERE sae = ? AND feature = ? AND kind = 'top' AND rank < ?",
            (sae, j, TOP_CONTEXTS),
        ).fetchall()
        acts = [np.frombuffer(r[0], dtype=np.float16) for r in rows]
        if acts:
            out[j] = float((np.concatenate(acts) > 0).mean())
    return out


def pick_spread(ranked: Sequence[Sequence[int]], spread: dict[int, float], least: float) -> int | None:
    """The first feature, query by query in ``search``'s order, whose spread is at least ``least``;
    else the one with the largest spread (the earliest of equals); None when there is no hit."""
    order = list(dict.fromkeys(j for hits in ranked for j in hits))
    if not order:
        return None
    widest = max(order, key=lambda j: spread.get(j, 0.0))
    return next((j for j in order if spread.get(j, 0.0) >= least), widest)


def demo_feature(
    run: Path, lm: LoadedModel, sae: str = "", queries: Sequence[str] = ()
) -> tuple[str, int] | None:
    """(dictionary, feature) the demo steers, in the largest analysed dictionary: among ``search``'s
    first ``DEMO_HITS`` hits for each of ``queries`` (``DEMO_QUERIES``), the first whose context
    spread reaches ``DEMO_SPREAD`` (``pick_spread``; later queries are searched only when no hit of
    the earlier ones does); None when no feature fires specifically on any query."""
    from monosemantic.config import load_stage
    from monosemantic.features.search import analysed_texts, search

    con = db.open_db(run, readonly=True)
    try:
        name = db.pick_sae(con, run, sae)
        module, cfg = load_dictionary(run / "saes" / name)
        corpus = load_stage(run, "harvest").corpus
        ranked: list[list[int]] = []
        spread: dict[int, float] = {}
        for query in queries or DEMO_QUERIES:
            hits, _ = search(
                con,
                lm,
                int(cfg["layer"]),
                name,
                module,
                query,
                top=DEMO_HITS,
                texts=analysed_texts(con, name, corpus),
            )
            ranked.append([h.feature for h in hits])
            spread.update(context_spread(con, name, ranked[-1]))
            if any(spread[j] >= DEMO_SPREAD for j in ranked[-1]):
                break
    finally:
        con.close()
    found = pick_spread(ranked, spread, DEMO_SPREAD)
    return None if found is None else (name, found)


def demo_steering(
    run: Path, lm: LoadedModel, cfg: GenerateConfig | None = None, scale: float = DEMO_SCALE
) -> tuple[str, list[Effect]] | None:
    """The demo's steering example: the context feature ``demo_feature`` finds, clamped at
    ``scale`` × its max over the bundled neutral prompts, measured and stored (the report shows
    it); returns the dictionary and the effects, None when search finds no feature."""
    found = demo_feature(run, lm)
    if found is None:
        return None
    name, feature = found
    cfg = cfg or GenerateConfig(max_new_tokens=24)
    target = load_target(run, name, lm)
    prompts = load_prompts()
    effects = measure(target, [feature], [scale], prompts, cfg)
    store_effects(run, name, effects, settings_key(target, prompts, cfg))
    return name, effects
