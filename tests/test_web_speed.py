"""What keeps the feature browser fast and never stale: read-only connections kept between
requests (and dropped once the database changes in any way), search answers remembered per state
of the database, feature pages built in their own small pool, security headers on every answer,
the histogram written in Python equal to the template it replaced."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from monosemantic.web import api, state
from monosemantic.web.app import SECURITY_HEADERS, create_app
from monosemantic.web.live import live_server
from monosemantic.web.state import NotFound, Served, ServedRun, db_state


def _db(path: Path, value: int) -> sqlite3.Connection:
    """A WAL database at ``path`` holding ``value``; the writer stays open (its log stays)."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
    con.execute("DELETE FROM t")
    con.execute("INSERT INTO t VALUES (?)", (value,))
    return con


def _value(r: ServedRun) -> int:
    with r.connect() as con:
        return int(con.execute("SELECT v FROM t").fetchone()[0])


@pytest.fixture
def run(tmp_path: Path) -> Path:
    (tmp_path / "r").mkdir()
    return tmp_path / "r"


class _NoClock:
    """A stat result whose mtime never moves (as within one tick of a coarse file-system clock)."""

    def __init__(self, st: os.stat_result):
        self.st, self.st_mtime_ns = st, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.st, name)


def test_db_state_changes_with_every_commit_even_when_the_clock_does_not(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stat, fstat = os.stat, os.fstat
    monkeypatch.setattr(os, "stat", lambda p, *a, **k: _NoClock(stat(p, *a, **k)))
    monkeypatch.setattr(os, "fstat", lambda fd: _NoClock(fstat(fd)))
    path = run / "features.sqlite"
    assert db_state(path) is None
    writer = _db(path, 0)
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    content: dict[object, int] = {}

    def check() -> None:
        """Reads (which mark the log's index) leave the state; a state stands for one content."""
        state = db_state(path)
        v = int(reader.execute("SELECT v FROM t").fetchone()[0])
        assert db_state(path) == state
        assert content.setdefault(state, v) == v, f"state seen with {content[state]}, now {v}"

    check()
    for i in range(1, 6):
        writer.execute("UPDATE t SET v = ?", (i,))
        check()
        writer.execute("PRAGMA wal_checkpoint(RESTART)")  # the next commit writes the log from its start
        check()
    # a long log, restarted: the commits that follow overwrite it in place, leaving its size and
    # header (the salts change at the first commit only) as they are
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    writer.execute("CREATE TABLE big (b BLOB)")
    writer.execute("INSERT INTO big VALUES (zeroblob(500000))")
    writer.execute("PRAGMA wal_checkpoint(RESTART)")
    writer.execute("UPDATE t SET v = 100")
    wal = run / "features.sqlite-wal"
    size = wal.stat().st_size
    for i in range(101, 106):
        writer.execute("UPDATE t SET v = ?", (i,))
        check()
    assert wal.stat().st_size == size  # overwritten in place: only the log's index tells
    reader.close()
    writer.close()
    assert set(content.values()) == {*range(6), *range(101, 106)}  # each seen, under its own state


def test_connections_are_kept_while_busy_and_never_read_a_changed_database(run: Path) -> None:
    writer = _db(run / "features.sqlite", 1)
    r = ServedRun("r", run)
    with r.connect() as busy:  # another request in flight: the server is busy
        with r.connect() as a:
            assert a is not busy
        with r.connect() as b:
            assert b is a  # kept between requests
        assert _value(r) == 1
        writer.execute("UPDATE t SET v = 2")
        with r.connect() as c:
            assert c is not a  # opened before the change: closed, not used
        assert _value(r) == 2
        with pytest.raises(sqlite3.ProgrammingError):
            a.execute("SELECT 1")
    assert not r._idle  # idle server: nothing open, the writer's log can go
    writer.close()
    assert not (run / "features.sqlite-wal").exists()
    other = run / "other.sqlite"
    _db(other, 3).close()
    os.replace(other, run / "features.sqlite")  # a rewrite: a new file under the same name
    assert _value(r) == 3
    with r.connect():
        with r.connect():
            pass
        assert len(r._idle) == 1
        r.close()  # the server stops
        assert not r._idle


def test_at_most_a_few_idle_connections_stay_open(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _db(run / "features.sqlite", 1).close()
    monkeypatch.setattr(state, "MAX_IDLE_CONNECTIONS", 2)
    r = ServedRun("r", run)
    with r.connect():
        with r.connect(), r.connect(), r.connect(), r.connect():
            pass
        assert len(r._idle) == 2


def test_answers_are_remembered_until_the_database_changes(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = _db(run / "features.sqlite", 1)
    r = ServedRun("r", run)
    calls: list[int] = []

    def make(con: sqlite3.Connection) -> dict[str, int]:
        calls.append(1)
        return {"v": int(con.execute("SELECT v FROM t").fetchone()[0])}

    first = r.remembered(("search", "q"), make)
    for _ in range(20):  # reads change nothing (readers mark the log's index as they read)
        with r.connect() as con:
            con.execute("SELECT * FROM t").fetchall()
    assert r.remembered(("search", "q"), make) is first and len(calls) == 1
    assert r.remembered(("search", "other"), make) == first and len(calls) == 2
    writer.execute("UPDATE t SET v = 5")
    assert r.remembered(("search", "q"), make) == {"v": 5} and len(calls) == 3
    monkeypatch.setattr(state, "MAX_REMEMBERED", 2)
    for q in "abc":
        r.remembered(("search", q), make)
    assert len(r._answers) == 2 and len(calls) == 6
    writer.close()
    (run / "features.sqlite").unlink()
    with pytest.raises(NotFound, match="no feature database"):
        r.remembered(("search", "q"), make)


def test_feature_pages_take_turns_in_their_own_pool(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inside, most, lock = [0], [0], threading.Lock()

    def slow(*_: object, **__: object) -> None:
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        with lock:
            inside[0] -= 1
        raise NotFound("no such feature here")

    monkeypatch.setattr(api, "feature_data", slow)
    with live_server(create_app(Served([run]))) as base:

        def get(i: int) -> int:
            with httpx.Client(base_url=base, timeout=30) as c:
                path = f"/run/r/s/feature/{i}" if i % 2 else f"/api/runs/r/saes/s/features/{i}"
                return c.get(path).status_code

        threads, codes = [], []
        for i in range(8):
            threads.append(threading.Thread(target=lambda i=i: codes.append(get(i))))
            threads[-1].start()
        for t in threads:
            t.join()
    assert codes == [404] * 8
    assert most[0] == state.PAGE_THREADS


def test_every_answer_carries_the_security_headers(run: Path) -> None:
    open_ = TestClient(create_app(Served([run])), raise_server_exceptions=False)
    closed = TestClient(create_app(Served([run]), token="secret"), raise_server_exceptions=False)
    paths = ["/run/r", "/api/runs/r/saes/x/features/1", "/static/style.css"]
    answers = [*(open_.get(p) for p in paths), closed.get("/api/runs")]
    assert [a.status_code for a in answers] == [200, 404, 200, 401]
    for a in answers:
        for name, value in SECURITY_HEADERS.items():
            assert a.headers.get_list(name) == [value], (a.url, name)


HISTOGRAM_MACRO = """{% macro histogram(h) -%}
{%- set counts = h.counts %}{% set nz = [] %}{% for c in counts %}{% if c > 0 %}{% set _ = nz.append(loop.index0) %}{% endif %}{% endfor %}
{%- if not nz %}<p class="note">never fires</p>
{%- else %}{% set lo, hi = nz[0], nz[-1] %}{% set top = counts|max %}
<svg class="hist" viewBox="0 0 {{ (hi - lo + 1) * 8 }} 60" preserveAspectRatio="none" role="img" aria-label="activation histogram">
{%- for i in range(lo, hi + 1) %}{% set hgt = 0 if counts[i] == 0 else (2 + 58 * (counts[i] | log1p) / (top | log1p)) %}
<rect x="{{ (i - lo) * 8 }}" y="{{ 60 - hgt }}" width="7" height="{{ hgt }}"><title>{{ '%.3g'|format(h.edges[i]) if h.edges else i }}–{{ '%.3g'|format(h.edges[i + 1]) if h.edges else i + 1 }}: {{ counts[i] }}</title></rect>
{%- endfor %}
</svg>
<p class="note axis">{% if h.edges %}{{ '%.3g'|format(h.edges[lo]) }} … {{ '%.3g'|format(h.edges[hi + 1]) }} (log bins, log counts){% endif %}</p>
{%- endif %}
{%- endmacro %}"""  # noqa: E501
"""The template the histogram was (the readable reference of ``render.histogram_html``)."""


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.sampled_from([0, 0, 0, 1, 2, 7, 1000, 10**7]), min_size=1, max_size=60),
    edges=st.booleans(),
    data=st.data(),
)
def test_the_python_histogram_is_the_template_it_replaced(
    counts: list[int], edges: bool, data: st.DataObject
) -> None:
    from monosemantic.web.render import environment, histogram_html

    bounds = data.draw(st.lists(st.floats(-1e4, 1e6), min_size=len(counts) + 1, max_size=len(counts) + 1))
    h = {"counts": counts, "edges": sorted(bounds) if edges else []}
    macro = environment().from_string(HISTOGRAM_MACRO).module.histogram
    assert str(histogram_html(h)) == str(macro(h))
