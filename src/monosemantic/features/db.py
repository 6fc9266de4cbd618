"""``features.sqlite``: the run's feature database (plain SQLite, FTS5 for text search).

One database per run holds the analyses of any number of its dictionaries:

    meta          key/value: schema_version, histogram bin edges
    vocab         token id -> its bytes (so reading contexts needs no tokenizer)
    corpora       each analysed corpus (spec, sequence length)
    sequences     the analysed token sequences (int32 blob); sequences_fts: their text
    analyses      one row per dictionary: settings, progress (sequences done), resumable state
    features      per (dictionary, feature): frequency, max/mean activation, histogram,
                  logit effects, explanation and its score
    contexts      per feature: top / quantile-band / random non-activating windows of a sequence,
                  with per-token activations (float16 blob); contexts_fts: text of the top ones
    explanations_fts  explanations, searchable
    neighbors     nearest features by decoder cosine, within and across dictionaries
    catalog       features most specific to each labelled probe set
    steering      measured effects of steering (created when first written, by monosemantic.steer_eval)

Sequences are shared by the analyses of one corpus; contexts point into them by (sequence,
start), so a context's tokens are ``sequences.tokens[start : start + width]``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monosemantic.errors import UserError
from monosemantic.features.tokens import decode_tokens, window_text
from monosemantic.integrity import check_db, seal_path

SCHEMA_VERSION = 1
DB_NAME = "features.sqlite"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE vocab (id INTEGER PRIMARY KEY, token BLOB NOT NULL);
CREATE TABLE corpora (id INTEGER PRIMARY KEY, spec TEXT NOT NULL UNIQUE, seq_len INTEGER NOT NULL);
CREATE TABLE sequences (
  id INTEGER PRIMARY KEY, corpus INTEGER NOT NULL REFERENCES corpora(id), seq INTEGER NOT NULL,
  tokens BLOB NOT NULL, UNIQUE (corpus, seq));
CREATE VIRTUAL TABLE sequences_fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
CREATE TABLE analyses (
  sae TEXT PRIMARY KEY, corpus INTEGER NOT NULL REFERENCES corpora(id), config TEXT NOT NULL,
  seqs_done INTEGER NOT NULL DEFAULT 0, tokens_done INTEGER NOT NULL DEFAULT 0,
  finished INTEGER NOT NULL DEFAULT 0, state BLOB, stats TEXT);
CREATE TABLE features (
  sae TEXT NOT NULL, id INTEGER NOT NULL,
  n_fired INTEGER NOT NULL, freq REAL NOT NULL, max_act REAL NOT NULL, mean_act REAL NOT NULL,
  histogram TEXT NOT NULL, promoted TEXT, suppressed TEXT,
  explanation TEXT, explainer TEXT, score_auc REAL, score_bacc REAL,
  PRIMARY KEY (sae, id));
CREATE INDEX features_by_freq ON features (sae, freq);
CREATE INDEX features_by_score ON features (sae, score_auc);
CREATE TABLE contexts (
  id INTEGER PRIMARY KEY, sae TEXT NOT NULL, feature INTEGER NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('top', 'quantile', 'random')),
  rank INTEGER NOT NULL, band INTEGER, activation REAL NOT NULL,
  seq INTEGER NOT NULL REFERENCES sequences(id), start INTEGER NOT NULL, peak INTEGER NOT NULL,
  acts BLOB NOT NULL);
CREATE INDEX contexts_by_feature ON contexts (sae, feature, kind, rank);
CREATE VIRTUAL TABLE contexts_fts USING fts5(text, tokenize = 'unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE explanations_fts USING fts5(
  sae UNINDEXED, feature UNINDEXED, explanation, tokenize = 'porter unicode61 remove_diacritics 2');
CREATE TABLE neighbors (
  sae TEXT NOT NULL, feature INTEGER NOT NULL, other_sae TEXT NOT NULL, other INTEGER NOT NULL,
  cosine REAL NOT NULL, PRIMARY KEY (sae, feature, other_sae, other));
CREATE TABLE catalog (
  probe_set TEXT NOT NULL, sae TEXT NOT NULL, feature INTEGER NOT NULL, rank INTEGER NOT NULL,
  score REAL NOT NULL, auc REAL NOT NULL, PRIMARY KEY (probe_set, sae, feature));
"""


@dataclass(frozen=True)
class Context:
    """A window of one analysed sequence and a feature's activation on each of its tokens."""

    kind: str
    rank: int
    band: int | None
    activation: float
    """The feature's largest activation in the sequence (0 for random non-activating windows)."""
    seq: int
    start: int
    peak: int
    """Position (in the sequence) of the largest activation."""
    tokens: list[str]
    """Display text per token, at character boundaries: a character split over several tokens
    shows at the one holding its last byte, the others show "" (``tokens.window_text``)."""
    acts: list[float]
    """The feature's activation on each token."""
    shown_acts: list[float] = field(default_factory=list)
    """The activation to show with each token's text: the largest over the tokens that hold bytes
    of the characters it shows (equal to ``acts`` where no character is split)."""

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def spans(self) -> list[tuple[str, float, list[int]]]:
        """(text, activation to show, sequence positions of its tokens) per displayed piece: the
        tokens that show "" (earlier bytes of a split character) join the next token with text."""
        shown = self.shown_acts or self.acts
        out, pending = [], []
        for i, (tok, a) in enumerate(zip(self.tokens, shown, strict=True)):
            pending.append(self.start + i)
            if tok:
                out.append((tok, max(a, *(self.acts[j - self.start] for j in pending)), pending))
                pending = []
        if pending and out:
            out[-1][2].extend(pending)
        return out


_WRITES = {
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_CREATE_INDEX,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_DROP_INDEX,
    sqlite3.SQLITE_ALTER_TABLE,
}


def _unseal_on_write(path: Path) -> Any:
    """An SQLite authorizer that removes the database's checksum seal before the first statement
    that changes it: whoever writes (a stage under the run lock, which seals again when it is
    done, or any other code), a stale seal never makes a sound database look corrupt."""
    seal = seal_path(path)
    unsealed = False

    def authorize(action: int, *_: Any) -> int:
        nonlocal unsealed
        if action in _WRITES and not unsealed:
            seal.unlink(missing_ok=True)
            unsealed = True
        return sqlite3.SQLITE_OK

    return authorize


def open_db(run_dir: Path, *, create: bool = False, readonly: bool = False) -> sqlite3.Connection:
    """Open ``run_dir/features.sqlite`` (creating the schema when ``create``), checking its version.

    ``readonly`` (commands that only read: search, feature, steer's lookups, exports) refuses any
    write through the connection and leaves the run folder as it was: its close removes the
    -wal / -shm files SQLite made for it, and the seal stays (an FTS5 query is authorised as an
    update of sqlite_master, which would otherwise unseal the database)."""
    path = run_dir / DB_NAME
    if not path.is_file() and not create:
        raise UserError(f"{run_dir} has no feature database: run `monosemantic analyze {run_dir}` first")
    rerun = f"delete it and rerun `monosemantic analyze {run_dir}`"
    if path.is_file():
        check_db(path, rerun)
    con = sqlite3.connect(path, timeout=30.0)  # a writer's commit holds readers for milliseconds
    con.row_factory = sqlite3.Row
    if not readonly:
        con.set_authorizer(_unseal_on_write(path))
    try:
        con.execute("PRAGMA foreign_keys = ON")
        if readonly:
            # Not SQLite's mode=ro: a read-only connection cannot delete the -wal / -shm files when
            # it closes, and leaves them behind; this one can, and query_only refuses any write.
            con.execute("PRAGMA query_only = ON")
        else:
            # WAL: a killed writer leaves the last commit intact, and readers (serve) go on
            # reading while analyze writes
            con.execute("PRAGMA journal_mode = WAL")
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        con.close()
        raise UserError(f"{path} is corrupt ({e}): {rerun}") from e
    if "meta" not in tables and readonly:
        con.close()
        raise UserError(f"{path} holds no feature tables: {rerun}")
    if "meta" not in tables:
        # one transaction: executescript would otherwise commit table by table, and a full disk
        # midway would leave a database without its version that no rerun could open
        try:
            con.executescript(
                f"BEGIN; {_SCHEMA} INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;"
            )
        except sqlite3.Error:
            con.close()
            raise
        return con
    version = int(get_meta(con, "schema_version") or 0)
    if version != SCHEMA_VERSION:
        con.close()
        raise UserError(
            f"{path} has schema version {version}, this monosemantic reads {SCHEMA_VERSION}: "
            "delete it and rerun `monosemantic analyze`"
        )
    return con


def get_meta(con: sqlite3.Connection, key: str) -> str | None:
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def set_meta(con: sqlite3.Connection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def set_vocab(con: sqlite3.Connection, tokens: list[bytes]) -> None:
    if con.execute("SELECT count(*) FROM vocab").fetchone()[0] != len(tokens):
        con.execute("DELETE FROM vocab")
        con.executemany("INSERT INTO vocab VALUES (?, ?)", enumerate(tokens))


def vocab(con: sqlite3.Connection) -> list[bytes]:
    return [bytes(r[0]) for r in con.execute("SELECT token FROM vocab ORDER BY id")]


def corpus_id(con: sqlite3.Connection, spec: str, seq_len: int) -> int:
    row = con.execute("SELECT id, seq_len FROM corpora WHERE spec = ?", (spec,)).fetchone()
    if row is not None:
        if row["seq_len"] != seq_len:
            raise UserError(
                f"corpus {spec!r} was analysed with sequences of {row['seq_len']} tokens, not {seq_len}: "
                "rerun analyze with --force"
            )
        return int(row["id"])
    return int(
        con.execute("INSERT INTO corpora (spec, seq_len) VALUES (?, ?)", (spec, seq_len)).lastrowid or 0
    )


def n_sequences(con: sqlite3.Connection, corpus: int) -> int:
    return int(con.execute("SELECT count(*) FROM sequences WHERE corpus = ?", (corpus,)).fetchone()[0])


def add_sequences(
    con: sqlite3.Connection, corpus: int, first: int, tokens: np.ndarray, words: list[bytes]
) -> None:
    """Store sequences ``first ..`` of a corpus (rows of ``tokens``) unless already there."""
    have = n_sequences(con, corpus)
    for i in range(max(0, have - first), len(tokens)):
        ids = tokens[i].astype(np.int32)
        rowid = con.execute(
            "INSERT INTO sequences (corpus, seq, tokens) VALUES (?, ?, ?)", (corpus, first + i, ids.tobytes())
        ).lastrowid
        con.execute("INSERT INTO sequences_fts (rowid, text) VALUES (?, ?)", (rowid, text_of(words, ids)))


def text_of(words: list[bytes], ids: Iterable[int]) -> str:
    """The text of a run of token ids (what ``decode_tokens`` concatenates to)."""
    return "".join(decode_tokens([words[t] for t in ids]))


def sequence_tokens(con: sqlite3.Connection, corpus: int, seq: int) -> np.ndarray:
    row = con.execute("SELECT tokens FROM sequences WHERE corpus = ? AND seq = ?", (corpus, seq)).fetchone()
    return np.frombuffer(row[0], dtype=np.int32)


def sequence_texts(con: sqlite3.Connection, corpus: int) -> list[str]:
    """The text of every stored sequence of a corpus (what its top contexts are drawn from)."""
    return [
        str(r[0])
        for r in con.execute(
            "SELECT f.text FROM sequences_fts f JOIN sequences s ON s.id = f.rowid WHERE s.corpus = ?",
            (corpus,),
        )
    ]


def match_sequences(
    con: sqlite3.Connection, corpus: int, fts_query: str, limit: int
) -> list[tuple[int, str]]:
    """(seq, text) of the corpus sequences matching an FTS5 query, best first."""
    try:
        rows = con.execute(
            "SELECT s.seq, f.text FROM sequences_fts f JOIN sequences s ON s.id = f.rowid "
            "WHERE sequences_fts MATCH ? AND s.corpus = ? ORDER BY f.rank LIMIT ?",
            (fts_query, corpus, limit),
        ).fetchall()
    except sqlite3.OperationalError as e:
        raise UserError(f"cannot search for {fts_query!r}: {e}") from e
    return [(int(r[0]), str(r[1])) for r in rows]


def analysis(con: sqlite3.Connection, sae: str) -> sqlite3.Row | None:
    return con.execute("SELECT * FROM analyses WHERE sae = ?", (sae,)).fetchone()


def analysed_saes(con: sqlite3.Connection) -> list[str]:
    return [r[0] for r in con.execute("SELECT sae FROM analyses WHERE finished = 1 ORDER BY sae")]


def delete_analysis(con: sqlite3.Connection, sae: str) -> None:
    """Forget everything recorded about one dictionary (sequences stay: other analyses share them)."""
    delete_results(con, sae)
    con.execute("DELETE FROM analyses WHERE sae = ?", (sae,))


def delete_results(con: sqlite3.Connection, sae: str) -> None:
    """Drop one dictionary's features, contexts, explanations, neighbours and catalog entries."""
    con.execute("DELETE FROM contexts_fts WHERE rowid IN (SELECT id FROM contexts WHERE sae = ?)", (sae,))
    con.execute("DELETE FROM explanations_fts WHERE sae = ?", (sae,))
    for table in ("contexts", "features", "catalog"):
        con.execute(f"DELETE FROM {table} WHERE sae = ?", (sae,))
    con.execute("DELETE FROM neighbors WHERE sae = ? OR other_sae = ?", (sae, sae))


def insert_contexts(
    con: sqlite3.Connection, sae: str, corpus: int, rows: Iterable[tuple], words: list[bytes]
) -> None:
    """Rows of (feature, kind, rank, band, activation, seq, start, peak, acts (width,) array); the
    text of 'top' contexts goes into contexts_fts."""
    cache: dict[int, tuple[int, np.ndarray]] = {}
    for feature, kind, rank, band, act, seq, start, peak, acts in rows:
        if seq not in cache:
            r = con.execute(
                "SELECT id, tokens FROM sequences WHERE corpus = ? AND seq = ?", (corpus, seq)
            ).fetchone()
            cache[seq] = (int(r[0]), np.frombuffer(r[1], dtype=np.int32))
        seq_row, toks = cache[seq]
        blob = np.asarray(acts, dtype=np.float16).tobytes()
        cid = con.execute(
            "INSERT INTO contexts (sae, feature, kind, rank, band, activation, seq, start, peak, acts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (sae, feature, kind, rank, band, act, seq_row, start, peak, blob),
        ).lastrowid
        if kind == "top":
            text = text_of(words, toks[start : start + len(acts)])
            con.execute("INSERT INTO contexts_fts (rowid, text) VALUES (?, ?)", (cid, text))


def feature_row(con: sqlite3.Connection, sae: str, feature: int) -> sqlite3.Row:
    row = con.execute("SELECT * FROM features WHERE sae = ? AND id = ?", (sae, feature)).fetchone()
    if row is None:
        n = con.execute("SELECT count(*) FROM features WHERE sae = ?", (sae,)).fetchone()[0]
        if n == 0:
            raise UserError(f"{sae} is not analysed yet: run `monosemantic analyze RUN --sae {sae}`")
        raise UserError(f"{sae} has no feature {feature}: ids run from 0 to {n - 1}")
    return row


def contexts(con: sqlite3.Connection, sae: str, feature: int, kind: str, words: list[bytes]) -> list[Context]:
    """A feature's contexts of one kind ('top', 'quantile' or 'random'), in rank order."""
    rows = con.execute(
        "SELECT c.*, s.tokens AS seq_tokens, s.seq AS seq_index FROM contexts c "
        "JOIN sequences s ON s.id = c.seq WHERE c.sae = ? AND c.feature = ? AND c.kind = ? ORDER BY c.rank",
        (sae, feature, kind),
    ).fetchall()
    out = []
    for r in rows:
        acts = np.frombuffer(r["acts"], dtype=np.float16).astype(float)
        start, end = r["start"], r["start"] + len(acts)
        # window_text reads at most 4 tokens beyond the window (a character's bytes): listing the
        # whole sequence's tokens was ~0.3 ms of a feature page
        lo = max(0, start - 4)
        seq = np.frombuffer(r["seq_tokens"], dtype=np.int32)[lo : end + 4].tolist()
        texts, shown = window_text([words[t] for t in seq], start - lo, end - lo, acts.tolist())
        out.append(
            Context(
                kind=kind,
                rank=r["rank"],
                band=r["band"],
                activation=r["activation"],
                seq=r["seq_index"],
                start=r["start"],
                peak=r["peak"],
                tokens=texts,
                acts=acts.tolist(),
                shown_acts=shown,
            )
        )
    return out


def search_contexts(con: sqlite3.Connection, sae: str, fts_query: str) -> dict[int, int]:
    """feature -> how many of its top contexts match an FTS5 query."""
    try:
        # the subquery makes SQLite match first (few rows) and look the contexts up by id; as a join
        # it scanned every context of the dictionary and probed the index per row (8 s on the demo)
        rows = con.execute(
            "SELECT feature, count(*) FROM contexts WHERE sae = ? AND kind = 'top' AND id IN "
            "(SELECT rowid FROM contexts_fts WHERE contexts_fts MATCH ?) GROUP BY feature",
            (sae, fts_query),
        ).fetchall()
    except sqlite3.OperationalError as e:
        raise UserError(f"cannot search for {fts_query!r}: {e}") from e
    return {int(r[0]): int(r[1]) for r in rows}


def search_explanations(
    con: sqlite3.Connection, sae: str, fts_query: str, limit: int
) -> list[tuple[int, str]]:
    try:
        rows = con.execute(
            "SELECT feature, explanation FROM explanations_fts WHERE explanations_fts MATCH ? AND sae = ? "
            "ORDER BY rank LIMIT ?",
            (fts_query, sae, limit),
        ).fetchall()
    except sqlite3.OperationalError as e:
        raise UserError(f"cannot search for {fts_query!r}: {e}") from e
    return [(int(r[0]), str(r[1])) for r in rows]


def set_explanation(
    con: sqlite3.Connection, sae: str, feature: int, text: str, explainer: str, auc: float, bacc: float
) -> None:
    con.execute(
        "UPDATE features SET explanation = ?, explainer = ?, score_auc = ?, score_bacc = ? "
        "WHERE sae = ? AND id = ?",
        (text, explainer, auc, bacc, sae, feature),
    )
    con.execute("DELETE FROM explanations_fts WHERE sae = ? AND feature = ?", (sae, feature))
    con.execute("INSERT INTO explanations_fts VALUES (?, ?, ?)", (sae, feature, text))


def feature_stats(con: sqlite3.Connection, sae: str) -> dict[str, np.ndarray]:
    """Per-feature arrays (index = feature id): freq, max_act, mean_act, n_fired."""
    rows = con.execute(
        "SELECT id, freq, max_act, mean_act, n_fired FROM features WHERE sae = ? ORDER BY id", (sae,)
    )
    arr = np.array([tuple(r) for r in rows], dtype=np.float64).reshape(-1, 5)
    return {"freq": arr[:, 1], "max_act": arr[:, 2], "mean_act": arr[:, 3], "n_fired": arr[:, 4]}


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """All or nothing: a crash inside leaves the database as it was before."""
    with con:
        yield con


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def pick_sae(con: sqlite3.Connection, run: Path, sae: str) -> str:
    """The dictionary named, or the largest analysed one.

    Raises:
        UserError: the named dictionary is not analysed, or none is.
    """
    done = analysed_saes(con)
    if sae:
        if sae not in done and not (run / "saes" / sae).is_dir():
            have = ", ".join(sorted(p.name for p in (run / "saes").glob("*") if p.is_dir())) or "none"
            raise UserError(f"{run} has no dictionary {sae!r} (it has: {have})")
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
