"""``monosemantic analyze``: one streaming pass over a corpus through model + dictionaries into
``features.sqlite``.

Every dictionary named gets a ``FeatureCollector`` (bounded memory: fixed-size buffers per
feature); the pass is shared, so the model runs once however many dictionaries are analysed, and
not at all when the corpus is the run's activation store. Every ``checkpoint_every`` sequences the
sequences seen so far and each collector's state go into the database in one transaction, with
the position reached; a rerun resumes there. At the end each dictionary's features, contexts and
logit effects are written and its state dropped.
"""

from __future__ import annotations

import io
import json
import logging
import math
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monosemantic.activations import ActivationStore
from monosemantic.config import AnalyzeConfig
from monosemantic.corpus import load_texts
from monosemantic.dictionary import load_dictionary
from monosemantic.errors import UserError
from monosemantic.features import db
from monosemantic.features.collect import HIST_EDGES, CollectorConfig, FeatureCollector, Results
from monosemantic.features.logits import top_logit_effects
from monosemantic.features.neighbors import store_neighbors
from monosemantic.features.sources import Batch, model_batches, store_batches, store_sequences
from monosemantic.features.tokens import decode_tokens, token_bytes
from monosemantic.fsio import disk_full_message, file_digest, fingerprint
from monosemantic.models import LoadedModel
from monosemantic.progress import Throughput, progress_bar
from monosemantic.sae import SparseAutoencoder
from monosemantic.unembed import output_path_mismatch

log = logging.getLogger(__name__)

DEFAULT_MODEL_TOKENS = 200_000
# settings that change what an analysis records; the others (batching aside) may change on resume
_RESULT_KEYS = (
    "corpus",
    "n_tokens",
    "top_k",
    "n_samples",
    "n_bands",
    "n_random",
    "before",
    "after",
    "seed",
    "batch_size",
)


def sae_dirs(run_dir: Path, names: str) -> list[Path]:
    """The dictionaries named (comma-separated), or every finished one in the run."""
    root = run_dir / "saes"
    if names.strip():
        dirs = [root / n.strip() for n in names.split(",") if n.strip()]
        for d in dirs:
            if not (d / "sae.safetensors").is_file():
                have = ", ".join(p.parent.name for p in sorted(root.glob("*/sae.safetensors"))) or "none"
                raise UserError(f"{run_dir} has no trained dictionary {d.name!r} (it has: {have})")
        return dirs
    dirs = sorted(p.parent for p in root.glob("*/sae.safetensors"))
    if not dirs:
        raise UserError(
            f"{run_dir} has no trained dictionaries: run `monosemantic train --out {run_dir}` first"
        )
    return dirs


def _state_bytes(collector: FeatureCollector) -> bytes:
    buf = io.BytesIO()
    torch.save(collector.state_dict(), buf)
    return buf.getvalue()


@dataclass
class _Job:
    """One dictionary under analysis."""

    name: str
    sae: SparseAutoencoder
    collector: FeatureCollector
    done: int
    """Sequences analysed so far."""
    stats: dict[str, Any] = field(default_factory=dict)


def check_inputs(run_dir: Path, cfg: AnalyzeConfig) -> ActivationStore:
    """What can be checked before anything is written (run.toml, the database): the store exists,
    the dictionaries exist, the context window fits the sequences, a --corpus exists. Raises ``UserError``."""
    store = ActivationStore(run_dir)
    sae_dirs(run_dir, cfg.sae)
    seq_len = int(store.manifest["seq_len"])
    width = cfg.before + cfg.after + 1
    if width > seq_len:
        raise UserError(f"--before + --after + 1 = {width} exceeds the sequence length {seq_len}")
    if cfg.corpus != "store":
        load_texts(cfg.corpus)
    return store


def analyze(
    run_dir: Path, cfg: AnalyzeConfig, lm: LoadedModel, *, force: bool = False, device: str = "cpu"
) -> dict[str, dict[str, Any]]:
    """Analyse the dictionaries ``cfg.sae`` of ``run_dir``; returns per dictionary its summary."""
    store = check_inputs(run_dir, cfg)
    layer, seq_len = int(store.manifest["layer"]), int(store.manifest["seq_len"])
    dirs = sae_dirs(run_dir, cfg.sae)
    try:
        con = db.open_db(run_dir, create=True)
        try:
            return _analyze(con, run_dir, cfg, lm, store, layer, seq_len, dirs, force, device)
        finally:
            con.close()
    except sqlite3.OperationalError as e:
        # SQLite says "full" for ENOSPC and "disk I/O error" for EFBIG (a file size limit); the
        # transaction it was in is rolled back, so the database holds the last checkpoint
        full = "full" in str(e) or "disk I/O error" in str(e)
        if not full:
            raise
        raise UserError(disk_full_message(run_dir / db.DB_NAME, _db_bytes_estimate(store, dirs))) from e


def _db_bytes_estimate(store: ActivationStore, dirs: list[Path]) -> int:
    """A rough size of what analyze writes: the sequences (int32) and, per feature, ~50 contexts
    of ~64 tokens (float16 activations, int32 positions) with their FTS text."""
    n_features = sum(int(json.loads((d / "cfg.json").read_text())["n_features"]) for d in dirs)
    return 4 * store.n_tokens("train") + n_features * 50 * 64 * 8


def _analyze(
    con: sqlite3.Connection,
    run_dir: Path,
    cfg: AnalyzeConfig,
    lm: LoadedModel,
    store: ActivationStore,
    layer: int,
    seq_len: int,
    dirs: list[Path],
    force: bool,
    device: str,
) -> dict[str, dict[str, Any]]:
    words = token_bytes(lm.tokenizer, int(getattr(lm.model.config, "vocab_size", 0) or 0))
    ccfg = CollectorConfig(
        cfg.top_k, cfg.n_samples, cfg.n_bands, cfg.n_random, cfg.before, cfg.after, cfg.seed
    )
    base_settings = {k: v for k, v in asdict(cfg).items() if k in _RESULT_KEYS}
    with db.transaction(con):
        db.set_vocab(con, words)
        db.set_meta(con, "hist_edges", json.dumps(HIST_EDGES.tolist()))
        # the store's sequences change when it is harvested again: name that corpus by its shards
        spec = f"store:{fingerprint(store.manifest['shards'])}" if cfg.corpus == "store" else cfg.corpus
        corpus = db.corpus_id(con, spec, seq_len)
    jobs, summaries = [], {}
    for d in dirs:
        row = db.analysis(con, d.name)
        settings = {**base_settings, "corpus": spec, "dictionary": file_digest(d / "sae.safetensors")}
        if row is not None and (force or json.loads(row["config"]) != settings):
            # an analysis that stopped before its first batch (a bad --corpus) binds nothing
            if not force and (row["finished"] or row["seqs_done"]):
                old = json.loads(row["config"])
                key = next(k for k in settings if old.get(k) != settings[k])
                what = "was retrained" if key == "dictionary" else f"was analysed with {key}={old.get(key)!r}"
                raise UserError(f"{d.name} {what} since: rerun with --force to discard that analysis")
            with db.transaction(con):
                db.delete_analysis(con, d.name)
            row = None
        if row is not None and row["finished"]:
            summaries[d.name] = json.loads(row["stats"])
            continue
        sae, _ = load_dictionary(d, device)
        collector = FeatureCollector(sae.n_features, ccfg)
        if row is None:
            with db.transaction(con):
                con.execute(
                    "INSERT INTO analyses (sae, corpus, config) VALUES (?, ?, ?)",
                    (d.name, corpus, json.dumps(settings)),
                )
        elif row["state"] is not None:
            collector.load_state_dict(torch.load(io.BytesIO(row["state"]), weights_only=True))
        jobs.append(_Job(d.name, sae, collector, 0 if row is None else int(row["seqs_done"])))
    if not jobs:
        if con.execute("SELECT count(*) FROM neighbors").fetchone()[0] == 0:
            refresh_neighbors(con, run_dir)
        return summaries
    if cfg.corpus == "store":
        n_seqs = store_sequences(store, cfg.n_tokens)
        skip = min(j.done for j in jobs)
        batches: Iterator[Batch] = store_batches(store, n_seqs, cfg.batch_size, skip)
    else:
        n_seqs = math.ceil((cfg.n_tokens or DEFAULT_MODEL_TOKENS) / (seq_len - 1))
        skip = min(j.done for j in jobs)
        batches = model_batches(
            lm, layer, cfg.corpus, seq_len, n_seqs, cfg.batch_size, skip, store.outlier_ratio
        )
    _stream(con, corpus, jobs, batches, words, n_seqs * (seq_len - 1), skip * (seq_len - 1), cfg, device)
    for job in jobs:
        summaries[job.name] = _finish(con, corpus, job, lm, words)
    refresh_neighbors(con, run_dir)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the resumable states are gone: give the space back
    con.execute("VACUUM")
    return summaries


def refresh_neighbors(con: sqlite3.Connection, run_dir: Path) -> None:
    """Recompute the neighbors table over every analysed dictionary of the run."""
    dictionaries = {}
    for name in db.analysed_saes(con):
        sae, cfg = load_dictionary(run_dir / "saes" / name)
        dictionaries[name] = (str(cfg["arch"]), sae.W_dec.detach())
    with db.transaction(con):
        store_neighbors(con, dictionaries)


def _stream(
    con: sqlite3.Connection,
    corpus: int,
    jobs: list[_Job],
    batches: Iterator[Batch],
    words: list[bytes],
    total: int,
    done: int,
    cfg: AnalyzeConfig,
    device: str,
) -> None:
    meter = Throughput()
    pending: list[Batch] = []  # batches whose sequences are not in the database yet
    since = 0

    def checkpoint() -> None:
        with db.transaction(con):
            for b in pending:
                db.add_sequences(con, corpus, b.first, b.tokens.numpy(), words)
            for job in jobs:
                con.execute(
                    "UPDATE analyses SET seqs_done = ?, tokens_done = ?, state = ? WHERE sae = ?",
                    (job.done, job.collector.n_tokens, _state_bytes(job.collector), job.name),
                )
        pending.clear()

    with progress_bar() as bar:
        task = bar.add_task(
            f"analyze {', '.join(j.name for j in jobs)}", total=total, completed=done, info=""
        )
        try:
            for batch in batches:
                x = batch.acts.reshape(-1, batch.acts.shape[-1]).to(device)
                for job in jobs:
                    if batch.first < job.done:
                        continue
                    feats = job.sae.encode(x)[1].view(*batch.tokens.shape, -1).cpu()
                    job.collector.update(feats, torch.arange(len(batch.tokens)) + batch.first, batch.valid)
                    job.done = batch.first + len(batch.tokens)
                pending.append(batch)
                n = batch.tokens.numel() - len(batch.tokens)
                meter.add(n)
                since += len(batch.tokens)
                bar.update(task, advance=n)
                if since >= cfg.checkpoint_every:
                    checkpoint()
                    since = 0
        except KeyboardInterrupt:
            if not any(j.collector.updating for j in jobs):  # else the last checkpoint stands
                checkpoint()
            raise
        checkpoint()
    for job in jobs:
        job.stats = {**meter.as_dict(), "n_tokens": job.collector.n_tokens}


def _finish(
    con: sqlite3.Connection, corpus: int, job: _Job, lm: LoadedModel, words: list[bytes]
) -> dict[str, Any]:
    res: Results = job.collector.finalize()
    promoted: list[Any] = [None] * job.sae.n_features
    suppressed: list[Any] = [None] * job.sae.n_features
    # a family whose output path we cannot reproduce gets no logit effects rather than wrong ones
    problem = output_path_mismatch(lm) if lm.is_causal else "not a causal language model"
    if problem is not None and lm.is_causal:
        log.warning("%s: logit effects skipped: %s", job.name, problem)
    if problem is None:
        effects = top_logit_effects(lm, job.sae.W_dec.T.detach().cpu())
        name = lambda t: decode_tokens([words[t]])[0]  # noqa: E731
        promoted = [json.dumps([[name(t), round(v, 4)] for t, v in p]) for p in effects.promoted]
        suppressed = [json.dumps([[name(t), round(v, 4)] for t, v in s]) for s in effects.suppressed]
    stats = {
        **job.stats,
        "n_features": job.sae.n_features,
        "dead_fraction": float((res.n_fired == 0).float().mean()),
        "n_sequences": job.done,
        **({"logit_effects_skipped": problem} if problem is not None else {}),
    }
    with db.transaction(con):
        db.delete_results(con, job.name)
        con.executemany(
            "INSERT INTO features (sae, id, n_fired, freq, max_act, mean_act, histogram, promoted, "
            "suppressed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (job.name, j, int(res.n_fired[j]), float(res.freq[j]), float(res.max[j]), float(res.mean[j]),
                 json.dumps(res.hist[j].tolist()), promoted[j], suppressed[j])
                for j in range(job.sae.n_features)
            ),
        )  # fmt: skip
        rows = (
            (j, e.kind, e.rank, e.band, e.activation, e.seq, e.start, e.peak, np.asarray(e.window))
            for j, entries in enumerate(res.contexts)
            for e in entries
        )
        db.insert_contexts(con, job.name, corpus, rows, words)
        con.execute(
            "UPDATE analyses SET finished = 1, state = NULL, stats = ? WHERE sae = ?",
            (json.dumps(stats), job.name),
        )
    return stats
