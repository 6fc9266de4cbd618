"""What the app holds between requests: the served runs (by name, so that no request names a
path), a read-only connection per request, per-run caches of small tables, and the language model
with its dictionaries, loaded once and used by one request at a time."""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import statistics
import threading
import time
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import anyio

from monosemantic.errors import UserError
from monosemantic.features import db

T = TypeVar("T")


MAX_STREAMS = 16
"""Steering streams open at once (running or queued for the model), at most; more get HTTP 503."""


class NotFound(UserError):
    """A run, dictionary, feature or file that the request names does not exist (HTTP 404)."""


MAX_IDLE_CONNECTIONS = 8
"""Read-only connections a run keeps open between requests, at most, while others are in flight
(one per concurrent request is opened; those beyond this many close when their request ends)."""
MAX_REMEMBERED = 512
"""Answers (search results) a run keeps, at most; the least recently used go first."""


def _head(path: Path, n: int, stat: bool = True) -> tuple[Any, ...]:
    """(size, mtime, first ``n`` bytes) of ``path``, only the bytes without ``stat``; () when it
    does not exist."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            return (st.st_size, st.st_mtime_ns, f.read(n)) if stat else (f.read(n),)
    except FileNotFoundError:
        return ()


def db_state(path: Path) -> tuple[Any, ...] | None:
    """What identifies the contents of the SQLite database ``path`` now, None when it does not
    exist: the file's device, inode, size and mtime; its write-ahead log's size, mtime and header
    (salts that change when SQLite restarts the log); and the header of the log's index (``-shm``),
    whose ``iChange`` counts every transaction while the log is open (SQLite's walformat.html).
    So every commit changes it: into the log (the index's counter, and the log's size until a
    restart), by a checkpoint into the file (its mtime), or by a rewrite (a new inode). What is
    left: two writers that each open, commit and close within one tick of the file system's clock
    and leave the file the same size (a reader would have to read in between)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    wal = _head(path.with_name(path.name + "-wal"), 32)
    # not the index's mtime: readers write their marks into it (after the header) on every read
    shm = _head(path.with_name(path.name + "-shm"), 48, stat=False)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, wal, shm)


@dataclass
class ServedRun:
    """One run directory under a URL-safe name; small tables are read once and kept, and read-only
    connections are kept open between requests."""

    name: str
    path: Path
    _cache: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _key_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _idle: list[tuple[tuple[Any, ...], sqlite3.Connection]] = field(default_factory=list)
    """open connections not in use, with the ``db_state`` they were opened at"""
    _in_flight: int = 0
    """requests holding a connection now"""
    _answers: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict)
    """``remembered`` answers by (``db_state``, key), least recently used first"""

    @property
    def db_path(self) -> Path:
        return self.path / db.DB_NAME

    @property
    def has_db(self) -> bool:
        return self.db_path.is_file()

    def db_state(self) -> tuple[Any, ...]:
        """``db_state`` of the run's feature database.

        Raises:
            NotFound: the run has no feature database.
        """
        state = db_state(self.db_path)
        if state is None:
            raise NotFound(f"{self.name} has no feature database: run `monosemantic analyze {self.path}`")
        return state

    def open_ro(self) -> sqlite3.Connection:
        """A new read-only connection (SQLite refuses any write through it); the caller closes it.

        Raises:
            NotFound: the run has no feature database.
        """
        self.db_state()
        uri = f"file:{quote(str(self.db_path.resolve()))}?mode=ro"
        con = sqlite3.connect(uri, uri=True, check_same_thread=False)
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A read-only connection for one request, kept open for the next one while the server is
        busy: a new connection reads the schema and the pages it needs again (0.4 ms of a feature
        page's 3). One opened before the database changed in any way (``db_state``) is closed
        instead of used, so that a rewritten database is never read through a stale connection.
        When no request of the run is in flight, none stays open: an open connection keeps the
        database's write-ahead log from being deleted when a writer (``analyze``) closes it, and a
        log left behind would be replayed into a database that later replaced this one.

        Raises:
            NotFound: the run has no feature database.
        """
        state = self.db_state()
        con, stale = None, []
        with self._lock:
            self._in_flight += 1
            while self._idle and con is None:
                was, c = self._idle.pop()
                if was == state:
                    con = c
                else:
                    stale.append(c)
        for c in stale:
            c.close()
        con = con or self.open_ro()
        try:
            yield con
        finally:
            with self._lock:
                self._in_flight -= 1
                self._idle.append((state, con))
                done = self._idle[MAX_IDLE_CONNECTIONS:] if self._in_flight else self._idle
                self._idle = self._idle[:MAX_IDLE_CONNECTIONS] if self._in_flight else []
            for _, c in done:
                c.close()

    def remembered(self, key: tuple[Any, ...], make: Callable[[sqlite3.Connection], T]) -> T:
        """``make(con)``, or the answer it gave for the same ``key`` while the database was as it is
        now (its ``db_state`` is part of the key: after any change, nothing made before is given).
        The answer is shared between requests: callers must not change it. A full-text search of
        a common word is 75-100 ms of SQLite; the same search again is a dictionary lookup.

        Raises:
            NotFound: the run has no feature database.
        """
        full = (self.db_state(), *key)
        with self._lock:
            if full in self._answers:
                self._answers.move_to_end(full)
                return self._answers[full]
        with self.connect() as con:
            answer = make(con)
        with self._lock:
            self._answers[full] = answer
            while len(self._answers) > MAX_REMEMBERED:
                self._answers.popitem(last=False)
        return answer

    def close(self) -> None:
        """Close the connections kept open (the server stops)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, c in idle:
            c.close()

    def cached(self, key: str, make: Callable[[], T]) -> T:
        """``make()`` once per run and key (vocabulary, histogram edges, dictionary sizes, map);
        one lock per key, so that a slow one (a map's UMAP) holds up no other."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def words(self, con: sqlite3.Connection) -> list[bytes]:
        return self.cached("words", lambda: db.vocab(con))

    def edges(self, con: sqlite3.Connection) -> list[float]:
        return self.cached("edges", lambda: json.loads(db.get_meta(con, "hist_edges") or "[]"))

    def saes(self, con: sqlite3.Connection) -> dict[str, int]:
        """Analysed dictionary -> number of features, smallest first."""

        def make() -> dict[str, int]:
            sizes = {
                name: int(con.execute("SELECT count(*) FROM features WHERE sae = ?", (name,)).fetchone()[0])
                for name in db.analysed_saes(con)
            }
            return dict(sorted(sizes.items(), key=lambda kv: (kv[1], kv[0])))

        return self.cached("saes", make)

    def check_sae(self, con: sqlite3.Connection, sae: str) -> int:
        """The number of features of the analysed dictionary ``sae``.

        Raises:
            NotFound: it is not analysed in this run.
        """
        sizes = self.saes(con)
        if sae not in sizes:
            raise NotFound(f"{self.name} has no analysed dictionary {sae!r} (it has: {', '.join(sizes)})")
        return sizes[sae]


def run_names(paths: list[Path]) -> dict[str, Path]:
    """URL names for the served runs: each directory's name, numbered when two share one.

    Raises:
        UserError: a path is not a run directory.
    """
    out: dict[str, Path] = {}
    for p in paths:
        if not p.is_dir():
            raise UserError(f"run directory {p} does not exist: give the --out of an earlier harvest/train")
        base = "".join(c if c.isalnum() or c in "-_." else "-" for c in p.resolve().name) or "run"
        name, i = base, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out[name] = p.resolve()
    return out


class ModelHolder:
    """The run's language model, loaded on first use; ``use`` holds a lock, so that concurrent
    requests that need the model queue behind one load and then take turns (one forward pass at
    a time: the CPU is shared anyway, and steering hooks must not see another request's tokens)."""

    def __init__(self, load: Callable[[Path], Any]):
        self._load = load
        self._models: dict[Path, Any] = {}
        self._built: dict[tuple[Path, str], Any] = {}
        self.lock = threading.Lock()

    @contextmanager
    def use(self, run: Path) -> Iterator[Any]:
        with self.lock:
            if run not in self._models:
                self._models[run] = self._load(run)
                gc.freeze()  # the model's objects live on too: out of the collector's sight (app.create_app)
            yield self._models[run]

    @contextmanager
    def use_with(self, run: Path, key: str, make: Callable[[Any], T]) -> Iterator[T]:
        """Like ``use``, but yields ``make(model)``, built once per run and ``key`` and kept (a
        ``SteerTarget`` or an ``Inspector`` per dictionary: their dictionary and statistics load
        once)."""
        with self.use(run) as lm:
            if (run, key) not in self._built:
                self._built[run, key] = make(lm)
            yield self._built[run, key]

    @property
    def busy(self) -> bool:
        """Whether a request holds the model now (a new one would queue)."""
        return self.lock.locked()

    def loaded(self, run: Path) -> bool:
        return run in self._models


MAX_MODEL_WAIT = 30.0
"""Seconds a request for the model may expect to wait for its turn; beyond, it is refused (503)."""


class ModelQueue:
    """Where the requests that run the model (concept search, analyse a text) run: one thread,
    one request after the other. Those waiting for it wait as coroutines, so that the thread pool
    that pages and searches share stays free (with 50 clients, waiting ones took all its 40
    threads, and a feature page waited 20 s for a thread); a request that would wait longer than
    ``MAX_MODEL_WAIT`` (the typical time of each request ahead, by kind, added up) is refused at
    once instead of timing out."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.waiting: Counter[str] = Counter()
        """requests queued or running, by kind"""
        self.recent: defaultdict[str, deque[float]] = defaultdict(lambda: deque(maxlen=9))
        """the last requests' times in the thread (seconds), by kind"""
        self._lock = threading.Lock()

    def typical_s(self, kind: str) -> float:
        """A request's time in the thread: the lower median of the recent ones of its kind (the
        one that loaded the model, a minute for a large one, stops counting once one more has run)."""
        times = self.recent.get(kind)
        return statistics.median_low(times) if times else 0.0

    def expected_wait(self) -> float:
        return sum(n * self.typical_s(kind) for kind, n in self.waiting.items())

    def enter(self, kind: str) -> float:
        """Count a new request of ``kind``; returns 0, or the expected wait (seconds) when it is
        too long (then the request is not counted)."""
        with self._lock:
            wait = self.expected_wait()
            if wait > MAX_MODEL_WAIT:
                return wait
            self.waiting[kind] += 1
            return 0.0

    def leave(self, kind: str) -> None:
        with self._lock:
            self.waiting[kind] -= 1

    def drop(self) -> None:
        """Drop the requests still queued (the server stops: it does not run them first); the
        queue takes new ones in a new thread (an app served again)."""
        old, self.thread = self.thread, ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        old.shutdown(wait=False, cancel_futures=True)

    def timed(self, kind: str, work: Callable[[], T]) -> T:
        """``work()``, its time recorded under ``kind``."""
        t0 = time.monotonic()
        try:
            return work()
        finally:
            with self._lock:
                self.recent[kind].append(time.monotonic() - t0)


PAGE_THREADS = 2
"""Threads that build feature pages at once. A page is ~3 ms of Python (GIL-bound) and a little
SQLite: two threads keep one core busy; with 40 (the default pool), 50 concurrent clients' pages
took turns at the GIL in no order, and a few waited ten times the median."""


class Served:
    """Every run the app serves, with the model holder they share."""

    def __init__(
        self,
        paths: list[Path],
        load_lm: Callable[[Path], Any] | None = None,
        max_new_tokens: int = 128,
        semantic: bool = True,
    ):
        """``max_new_tokens``: the most tokens a steering request generates per completion (a
        request asking for more gets this many); ``semantic``: concept search reranks by meaning
        (MiniLM over each candidate's firing windows, as the ``search`` command does)."""
        from monosemantic.stages.common import load_run_lm

        self.runs = {name: ServedRun(name, path) for name, path in run_names(paths).items()}
        self.models = ModelHolder(load_lm or load_run_lm)
        self.max_new_tokens = max_new_tokens
        self.semantic = semantic
        self.streams = 0
        """steering streams open now (generating or waiting for the model)"""
        self.streams_lock = threading.Lock()
        self.model_queue = ModelQueue()
        self.page_limiter = anyio.CapacityLimiter(PAGE_THREADS)
        """feature pages (HTML and JSON) queue here, first come first served (``api.page_work``)"""

    def stream_opened(self) -> bool:
        """Count a new steering stream; False (and not counted) when ``MAX_STREAMS`` are open."""
        with self.streams_lock:
            if self.streams >= MAX_STREAMS:
                return False
            self.streams += 1
            return True

    def stream_closed(self) -> None:
        with self.streams_lock:
            self.streams -= 1

    def run(self, name: str) -> ServedRun:
        """Raises NotFound for a name that is not served."""
        if name not in self.runs:
            raise NotFound(f"no run named {name!r} is served (served: {', '.join(self.runs)})")
        return self.runs[name]
