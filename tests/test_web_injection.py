"""Hostile input against the feature browser (issue 17 part 4): path traversal in every path part,
SQL and FTS5 syntax in the search boxes, markup in queries and texts, lone surrogates and NUL
bytes, huge bodies and query strings, wrong content types and methods. Never a 5xx, never a
file's content, never an unescaped ``<script>`` from the input, always the security headers.
Mostly in process (TestClient); what only a real HTTP server sees (a request line too long for
it, a chunked body, a NUL byte in the raw path) against uvicorn on a loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from monosemantic.web.api import MAX_BODY
from monosemantic.web.app import create_app
from monosemantic.web.live import live_server
from monosemantic.web.state import Served
from tests.web_run import make_analysed_run

SECRET = "TOPSECRET-7f3a"
"""Planted in files beside and above the run: no answer may ever carry it."""
LEAKS = (SECRET, "root:x:0:0", "[harvest]", "from __future__", "PRAGMA", "Traceback")
XSS = "<script>alert(1)</script>"
API = "/api/runs/tiny/saes/relu-64"


@pytest.fixture(scope="module")
def web_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path) -> Path:
    root = tmp_path_factory.mktemp("inject")
    run = make_analysed_run(root / "tiny", tiny_llama_dir, tiny_corpus)
    (root / "secret.txt").write_text(SECRET)
    (run / "secret.png").write_text(SECRET)
    (run / "report").mkdir(exist_ok=True)
    (run / "report" / "escape.png").symlink_to(root / "secret.txt")  # a figure that points outside
    (run / "report" / "passwd.png").symlink_to("/etc/passwd")
    return run


@pytest.fixture(scope="module")
def client(web_run: Path) -> TestClient:
    app = create_app(Served([web_run], max_new_tokens=4, semantic=False))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def server(client: TestClient) -> Iterator[str]:
    with live_server(client.app) as base:
        yield base


def safe(r: httpx.Response, what: object = "") -> None:
    """No server error, no leaked file, the security headers; HTML escapes the input's markup."""
    assert r.status_code < 500, (what, r.status_code, r.text[:300])
    for leak in LEAKS:
        assert leak not in r.text, (what, leak, r.text[:300])
    assert "script-src 'self'" in r.headers.get("content-security-policy", ""), what
    assert r.headers.get("x-content-type-options") == "nosniff", what
    if r.headers.get("content-type", "").startswith("text/html"):
        assert XSS not in r.text, what


TRAVERSALS = [
    "..%2f..%2fsecret.txt", "%2e%2e%2f%2e%2e%2fsecret.txt", "..%252f..%252fsecret.txt",
    "%2fetc%2fpasswd", "%2Fetc%2Fpasswd", "..%5c..%5csecret.txt", "....%2f%2fsecret.txt",
    "%c0%ae%c0%ae%2fsecret.txt", "%ef%bc%8e%ef%bc%8e%ef%bc%8fsecret.txt", "secret.png%00.png",
    "..%2fsecret.png", "escape.png", "passwd.png", "%2e%2e", "~root", "file:%2f%2f%2fetc%2fpasswd",
]  # fmt: skip
"""Encoded, double-encoded, overlong-UTF-8, full-width, backslashed, absolute, NUL-cut, symlinked."""
TEMPLATES = [
    "/api/runs/{x}", "/api/runs/{x}/catalog", "/api/runs/tiny/saes/{x}/features",
    "/api/runs/tiny/saes/{x}/features/0", "/api/runs/tiny/saes/relu-64/features/{x}",
    "/api/runs/tiny/saes/{x}/map", "/api/runs/tiny/saes/{x}/search?q=the", "/run/{x}", "/run/{x}/catalog",
    "/run/tiny/{x}/features", "/run/tiny/relu-64/feature/{x}", "/run/tiny/{x}/map", "/run/tiny/plot/{x}",
    "/static/{x}", "/static/..%2f{x}", "/run/tiny/search?q=the&sae={x}", "/run/tiny/steer?sae={x}&feature=1",
]  # fmt: skip


@pytest.mark.parametrize("template", TEMPLATES)
def test_no_path_part_reaches_a_file(client: TestClient, template: str) -> None:
    for x in TRAVERSALS:
        r = client.get(template.format(x=x))
        safe(r, template.format(x=x))
        assert r.status_code in (400, 404, 405, 422), (template.format(x=x), r.status_code)
        assert r.headers.get("content-type", "").split(";")[0] in ("application/json", "text/html")


def test_figures_are_served_from_the_report_only(client: TestClient, web_run: Path) -> None:
    (web_run / "report" / "fine.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    assert client.get("/run/tiny/plot/fine.png").content.startswith(b"\x89PNG")
    for name in ("escape.png", "passwd.png", "..%2Fsecret.png", "%2E%2E%2Fsecret.png"):
        r = client.get(f"/run/tiny/plot/{name}")
        safe(r, name)
        assert r.status_code == 404, name


QUERIES = [
    "'", '"', "''", '""', "'; DROP TABLE features; --", '" OR 1=1 --', "') OR ('1'='1",
    "1; SELECT * FROM vocab", "NEAR(", "NEAR(code sql)", "NEAR(code sql, 2)", "*", "code*", "*code", "OR",
    "AND", "NOT", "code OR sql", "code AND NOT sql", "(", ")", "((code", "code))", "^code", "text:code",
    "contexts_fts:code", "{text}: code",
    "-code", "+", "\x00", "code\x00sql", "\x00' OR 1=1", "%", "_", "\\", "\\'", ";", "--", "/*", "*/",
    "\u202e", "é’", "🙂", "\ufeff", "a" * 200, XSS, "<img src=x onerror=alert(1)>", "\"><script>x</script>",
    "{{7*7}}", "${7*7}", "../../etc/passwd", "%00", "%27",
]  # fmt: skip
"""SQL, FTS5 operators and syntax errors, NUL bytes, control and bidi characters, markup, templates."""


@pytest.mark.parametrize("q", QUERIES)
def test_search_boxes_take_any_text_as_text(client: TestClient, q: str) -> None:
    r = client.get(f"{API}/search", params={"q": q})
    safe(r, q)
    assert r.status_code == 200, (q, r.text[:300])
    assert r.json()["query"] == q  # taken as a phrase, whatever its syntax
    for mode in ("text", "concept"):
        page = client.get("/run/tiny/search", params={"q": q, "sae": "relu-64", "mode": mode})
        safe(page, (mode, q))
        assert page.status_code in (200, 400), (mode, q, page.status_code)
    c = client.get(f"{API}/concepts", params={"q": q, "top": 3})
    safe(c, q)
    assert c.status_code in (200, 400), (q, c.text[:300])


def test_search_text_is_never_sql(client: TestClient, web_run: Path) -> None:
    n = sqlite3.connect(web_run / "features.sqlite").execute("SELECT count(*) FROM features").fetchone()
    for q in QUERIES:
        client.get(f"{API}/search", params={"q": q})
    after = sqlite3.connect(web_run / "features.sqlite").execute("SELECT count(*) FROM features").fetchone()
    assert n == after
    # the order is a name from a fixed table, never SQL
    r = client.get(f"{API}/features", params={"order": "id; DROP TABLE features"})
    safe(r)
    assert r.status_code == 422
    # an operator is not applied: "code OR sql" finds what the phrase finds, nothing more
    phrase = client.get(f"{API}/search", params={"q": "code OR sql"}).json()
    either = client.get(f"{API}/search", params={"q": "code"}).json()
    assert len(phrase["contexts"]) <= len(either["contexts"])


MARKUP = [
    XSS,
    "<img src=x onerror=alert(1)>",
    "</textarea><script>alert(1)</script>",
    "\"'><svg/onload=alert(1)>",
]


@pytest.mark.parametrize("bad", MARKUP)
def test_markup_in_any_input_comes_back_escaped(client: TestClient, bad: str) -> None:
    pages = [
        ("/run/tiny/search", {"q": bad, "sae": "relu-64"}),
        ("/run/tiny/search", {"text": bad + " the code", "sae": "relu-64"}),
        ("/run/tiny/search", {"q": "the", "sae": bad}),
        (
            "/run/tiny/steer",
            {"sae": "relu-64", "feature": "1", "prompt": bad, "max_new_tokens": 2, "go": "1"},
        ),
        ("/run/tiny/steer", {"sae": "relu-64", "feature": bad}),
        ("/run/tiny/steer", {"sae": bad, "feature": "1", "prompt": "x", "go": "1"}),
        (f"/run/{bad}", {}),
        (f"/run/tiny/{bad}/feature/1", {}),
        ("/run/tiny/relu-64/features", {"order": bad}),
    ]
    for path, params in pages:
        r = client.get(path, params=params)
        safe(r, (path, params))
        assert r.headers["content-type"].startswith("text/html"), (path, r.headers["content-type"])
        assert bad not in r.text and "<svg/onload" not in r.text and "<img" not in r.text, (path, params)
    for path in (f"/api/runs/{bad}", f"{API}/search?q={bad}"):
        r = client.get(path)  # JSON: the text is data, and the browser is told not to sniff it
        safe(r, path)
        assert r.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{API}/inspect", {"text": "the code \ud800 of"}),
        (f"{API}/inspect", {"text": "\udfff"}),
        (f"{API}/inspect", {"text": "the \x00 code"}),
        (f"{API}/steer", {"prompt": "the \ud83d code", "features": [{"feature": 1}], "max_new_tokens": 2}),
        (f"{API}/steer", {"prompt": "\x00\x00", "features": [{"feature": 1}], "max_new_tokens": 2}),
    ],
)
def test_lone_surrogates_and_nul_bytes_in_bodies(client: TestClient, path: str, body: dict) -> None:
    content = json.dumps(body).encode()  # a lone surrogate as a \\ud800 escape, as a browser sends it
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    safe(r, body)
    assert r.status_code in (200, 400, 422), (body, r.text[:300])
    if r.status_code != 200:
        assert r.json()["error"]


def test_lone_surrogates_in_query_strings(client: TestClient) -> None:
    for path in (f"{API}/search?q=%ED%A0%80", f"{API}/concepts?q=a%ED%A0%80b", "/run/tiny/search?q=%ED%A0%80",
                 "/run/tiny/search?text=%ED%A0%80%20the&sae=relu-64",
                 f"{API}/steer/stream?prompt=%ED%A0%80&feature=1&scale=1&max_new_tokens=2"):  # fmt: skip
        r = client.get(path)
        safe(r, path)


@pytest.mark.parametrize("route", ["inspect", "steer"])
def test_huge_bodies_get_413_before_they_are_read(client: TestClient, route: str) -> None:
    big = "x" * (5 * 1024 * 1024)
    body = {"text": big} if route == "inspect" else {"prompt": big, "features": [{"feature": 1}]}
    r = client.post(f"{API}/{route}", json=body)
    safe(r)
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    # a chunked body without Content-Length is cut off as soon as it grows past the limit
    sent = [0]

    def chunks() -> Iterator[bytes]:
        yield b'{"text": "'
        for _ in range(200):
            sent[0] += 1
            yield b"y" * 65536
        yield b'"}'

    r = client.post(f"{API}/{route}", content=chunks(), headers={"content-type": "application/json"})
    safe(r)
    assert r.status_code == 413, r.text[:300]
    # just under the limit: read, and refused by the body's own bounds
    r = client.post(f"{API}/inspect", json={"text": "z" * (MAX_BODY - 100)})
    safe(r)
    assert r.status_code == 422 and "text" in r.json()["error"]


def test_deeply_nested_and_malformed_json(client: TestClient) -> None:
    bodies = [b"[" * 30_000 + b"]" * 30_000, b'{"text": ' * 5000 + b'"a"' + b"}" * 5000, b"{", b"",
              b"null", b"[]", b'"text"', b"1e999999", b"\xff\xfe\x00",
              b'{"text": "a"}' + b" " * 1000 + b"garbage", b'{"text": NaN}', b'{"text": 1}']  # fmt: skip
    for body in bodies:
        for route in ("inspect", "steer"):
            r = client.post(f"{API}/{route}", content=body, headers={"content-type": "application/json"})
            safe(r, body[:40])
            assert r.status_code in (400, 413, 422), (body[:40], r.status_code, r.text[:200])


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
     "text/html", "application/json; charset=utf-16", "application/octet-stream", "", "}{"],
)  # fmt: skip
def test_wrong_content_types(client: TestClient, content_type: str) -> None:
    for body in (b'{"text": "the code"}', b"text=the+code", b"<text>the</text>"):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post(f"{API}/inspect", content=body, headers=headers)
        safe(r, (content_type, body))
        assert r.status_code in (200, 400, 415, 422), (content_type, body, r.status_code)


def test_wrong_methods(client: TestClient) -> None:
    for method in ("PUT", "DELETE", "PATCH", "TRACE", "OPTIONS"):
        for path in (f"{API}/inspect", f"{API}/features/1", "/run/tiny", "/api/openapi.json"):
            r = client.request(method, path)
            safe(r, (method, path))
            assert r.status_code in (404, 405), (method, path, r.status_code)
    r = client.get(f"{API}/inspect")
    safe(r)
    assert r.status_code == 405 and r.json()["error"]


def test_huge_query_strings_and_repeated_parameters(client: TestClient) -> None:
    for path, params in [
        (f"{API}/search", {"q": "a" * 60_000}),  # the client's own limit is 64 KiB; a server's, below
        ("/run/tiny/search", {"q": "a" * 20_000, "text": "b" * 20_000}),
        (f"{API}/steer/stream", {"prompt": "the", "feature": list(range(2_000)), "scale": [1.0] * 2_000}),
        ("/run/tiny/steer", {"feature": ["1"] * 4_000, "go": "1"}),
        (f"{API}/features", {"page": "9" * 400}),
    ]:
        r = client.get(path, params=params)
        safe(r, path)
        assert r.status_code in (400, 414, 422), (path, r.status_code)


def test_a_real_server_refuses_what_its_parser_cannot_take(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")

    def raw(request: bytes) -> bytes:
        """What the server answers; it may answer and close before reading all of a request too
        large for it (then the rest of the send fails, and what it sent is still read)."""
        out = b""
        with socket.create_connection((host, int(port)), timeout=30) as s:
            with contextlib.suppress(OSError):
                s.sendall(request)
            with contextlib.suppress(OSError):
                while chunk := s.recv(65536):
                    out += chunk
        return out

    status = lambda b: int(b.split(b" ", 2)[1]) if b.startswith(b"HTTP/1.1 ") else 0  # noqa: E731
    head = b" HTTP/1.1\r\nHost: x\r\n"
    for request in (b"GET /api/runs/tiny/saes/relu-64/search?q=" + b"a" * 200_000 + head + b"\r\n",
                    b"GET /api/runs" + head + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n",
                    b"GET /api/runs" + head + b"X-Many: a\r\n" * 20_000 + b"\r\n"):  # fmt: skip
        got = raw(request)
        assert got == b"" or 400 <= status(got) < 500, got[:200]  # refused, or the connection dropped
    for path in (
        b"/run/tiny/plot/..%00/secret.png",
        b"/api/runs/tiny%00",
        b"/static/%00",
        b"/run/tiny/../../secret.txt",
    ):
        got = raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert 400 <= status(got) < 500 and SECRET.encode() not in got, (path, got[:200])
    with httpx.Client(base_url=server, timeout=60) as c:
        big = c.post(f"{API}/inspect", content=b'{"text": "' + b"x" * 3_000_000 + b'"}',
                     headers={"content-type": "application/json"})  # fmt: skip
        safe(big)
        assert big.status_code == 413

        def chunks() -> Iterator[bytes]:
            for _ in range(100):
                yield b"y" * 65536

        chunked = c.post(f"{API}/inspect", content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert c.post(f"{API}/inspect", json={"text": "the code"}).status_code == 200  # still serving


def test_a_request_that_would_wait_too_long_for_the_model_is_refused_at_once(client: TestClient) -> None:
    queue = client.app.state.served.model_queue  # type: ignore[attr-defined]
    assert client.post(f"{API}/inspect", json={"text": "the code"}).status_code == 200
    saved = list(queue.recent["inspect"])
    queue.waiting["inspect"] += 3  # three requests ahead, 20 s each: 60 s > MAX_MODEL_WAIT
    queue.recent["inspect"].extend([20.0] * 9)
    try:
        page = {"q": "code", "mode": "concept", "sae": "relu-64"}
        answers = [
            client.post(f"{API}/inspect", json={"text": "the code"}),
            client.get(f"{API}/concepts", params={"q": "code"}),
            client.get("/run/tiny/search", params=page),
        ]
        for r in answers:
            assert "script-src" in r.headers["content-security-policy"] and "Traceback" not in r.text
            assert r.status_code == 503 and "busy for about 60 s" in r.text, r.text[:300]
        assert client.get(f"{API}/features/1").status_code == 200  # pages and searches are not held up
    finally:
        queue.waiting["inspect"] -= 3
        queue.recent["inspect"].clear()
        queue.recent["inspect"].extend(saved)
    assert client.post(f"{API}/inspect", json={"text": "the code"}).status_code == 200
    assert sum(queue.waiting.values()) == 0
