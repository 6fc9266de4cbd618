"""The feature browser's routes on an analysed tiny run: every page and API answer, the same
numbers as the database, escaping, path traversal, bounds, the token, error pages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape

from monosemantic.web.app import create_app
from monosemantic.web.state import Served
from tests.web_run import EXPLAINED, SCRIPT, make_analysed_run


@pytest.fixture(scope="module")
def web_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path) -> Path:
    return make_analysed_run(tmp_path_factory.mktemp("web") / "tiny", tiny_llama_dir, tiny_corpus)


@pytest.fixture(scope="module")
def client(web_run: Path) -> TestClient:
    return TestClient(create_app(Served([web_run])), raise_server_exceptions=False)


def test_home_redirects_to_the_only_run_and_overview_lists_dictionaries(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200 and r.url.path == "/run/tiny"
    assert "relu-16" in r.text and "relu-64" in r.text and "/run/tiny/relu-64/features" in r.text
    o = client.get("/api/runs/tiny").json()
    assert o["layer"] == 2 and o["analysed"] == ["relu-16", "relu-64"]
    assert [d["name"] for d in o["dictionaries"]] == ["relu-16", "relu-64"]


def test_feature_api_matches_the_database(client: TestClient, web_run: Path) -> None:
    f = client.get("/api/runs/tiny/saes/relu-64/features/5").json()
    con = sqlite3.connect(web_run / "features.sqlite")
    sql = "SELECT freq, max_act FROM features WHERE sae = 'relu-64' AND id = 5"
    freq, max_act = con.execute(sql).fetchone()
    n_top = con.execute(
        "SELECT count(*) FROM contexts WHERE sae = 'relu-64' AND feature = 5 AND kind = 'top'"
    ).fetchone()[0]
    con.close()
    assert f["freq"] == pytest.approx(freq) and f["max_act"] == pytest.approx(max_act)
    assert len(f["top"]) == min(n_top, 20)
    for c in f["top"]:
        assert max(a for _, a in c["tokens"]) == pytest.approx(c["activation"], rel=1e-2, abs=1e-3)
    assert {n["sae"] for n in f["neighbors"]} == {"relu-16", "relu-64"}


def test_feature_page_shows_contexts_histogram_neighbours_and_escapes_markup(client: TestClient) -> None:
    r = client.get(f"/run/tiny/relu-64/feature/{EXPLAINED}")
    assert r.status_code == 200
    page = r.text
    assert SCRIPT not in page  # neither from the explanation nor from a token
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &#39;code&#39; &#34;x&#34;" in page
    assert 'class="tok' in page and '<svg class="hist"' in page and "nearest features" in page.lower()
    assert "cities" in page  # the catalog label
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_feature_list_paginates(client: TestClient) -> None:
    a = client.get("/api/runs/tiny/saes/relu-64/features", params={"per_page": 10, "order": "id"}).json()
    b = client.get("/api/runs/tiny/saes/relu-64/features", params={"per_page": 10, "page": 1, "order": "id"})
    assert a["total"] == 64 and [f["id"] for f in a["features"]] == list(range(10))
    assert [f["id"] for f in b.json()["features"]] == list(range(10, 20))
    assert client.get("/run/tiny/relu-64/features?page=1").status_code == 200
    # past the last page: a message, not an empty page "7 of 2" with a link back
    past = client.get("/run/tiny/relu-64/features?page=7")
    assert past.status_code == 404 and "pages run from 0 to 1" in past.text
    api_past = client.get("/api/runs/tiny/saes/relu-64/features", params={"per_page": 10, "page": 7})
    assert api_past.status_code == 404 and "pages run from 0 to 6" in api_past.json()["error"]
    last = client.get("/api/runs/tiny/saes/relu-64/features", params={"per_page": 10, "page": 6})
    assert last.status_code == 200


def test_full_text_search_finds_contexts_and_explanations(client: TestClient) -> None:
    r = client.get("/api/runs/tiny/saes/relu-64/search", params={"q": "code"}).json()
    assert r["contexts"] and all(h["matches"] > 0 for h in r["contexts"])
    assert EXPLAINED in [e["id"] for e in r["explanations"]]
    page = client.get("/run/tiny/search", params={"q": "code", "sae": "relu-64"}).text
    assert f"/run/tiny/relu-64/feature/{EXPLAINED}" in page and SCRIPT not in page
    # FTS5 syntax in a query is text, not an operator
    assert client.get("/api/runs/tiny/saes/relu-64/search", params={"q": 'NEAR("a" OR *'}).status_code == 200


def test_concept_search_loads_the_model_once(client: TestClient, web_run: Path) -> None:
    r = client.get("/api/runs/tiny/saes/relu-64/concepts", params={"q": "sql select", "top": 5})
    assert r.status_code == 200, r.text
    assert len(r.json()["hits"]) <= 5
    models = client.app.state.served.models  # type: ignore[attr-defined]
    assert models.loaded(web_run)
    assert client.get("/run/tiny/search", params={"q": "python", "mode": "concept"}).status_code == 200


def test_catalog_map_and_family(client: TestClient) -> None:
    assert client.get("/api/runs/tiny/catalog").json()[0]["feature"] == EXPLAINED
    assert "cities" in client.get("/run/tiny/catalog").text
    m = client.get("/api/runs/tiny/saes/relu-16/map").json()
    assert len(m["x"]) == len(m["y"]) == len(m["freq"]) == 16
    assert client.get("/run/tiny/relu-16/map").status_code == 200
    fam = client.get("/api/runs/tiny/saes/relu-16/features/0/family").json()
    assert fam["sae"] == "relu-16" and fam["feature"] == 0
    assert all(c["sae"] == "relu-64" for c in fam["children"])


@pytest.mark.parametrize(
    "path",
    [
        "/run/tiny/plot/..%2Frun.toml",
        "/run/tiny/plot/%2e%2e%2f%2e%2e%2fetc%2fpasswd.png",
        "/run/tiny/plot/../../../etc/passwd",
        "/run/..%2F..%2Fetc/catalog",
        "/api/runs/..%2Ftiny",
        "/static/..%2F..%2Fweb%2Fapp.py",
        "/static/../state.py",
        "/api/runs/tiny/saes/..%2F..%2Frun.toml/features/0",
    ],
)
def test_no_path_reaches_files_outside_the_run(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (404, 422), (path, r.status_code)
    assert "[harvest]" not in r.text and "import " not in r.text and "root:" not in r.text


def test_bounds_and_errors_are_messages_not_tracebacks(client: TestClient) -> None:
    cases = [
        ("/api/runs/tiny/saes/relu-64/features/64", 404),
        ("/api/runs/tiny/saes/relu-64/features/99999999999999999999", 422),
        ("/api/runs/tiny/saes/relu-64/features/-1", 422),
        ("/api/runs/nope", 404),
        ("/api/runs/tiny/saes/relu-999/features/0", 404),
        ("/api/runs/tiny/saes/relu-64/search?q=" + "x" * 201, 422),
        ("/api/runs/tiny/saes/relu-64/features?per_page=100000", 422),
        ("/api/runs/tiny/saes/relu-64/features/1/family", 400),  # the largest: nothing to split into
    ]
    for path, status in cases:
        r = client.get(path)
        assert r.status_code == status, (path, r.text)
        body = r.json()
        assert body["error"] and "Traceback" not in r.text
    page = client.get("/run/tiny/relu-64/feature/64")
    assert page.status_code == 404 and "<h1>Error 404</h1>" in page.text
    assert "ids run from 0 to 63" in page.text


def test_token_protects_every_route(web_run: Path) -> None:
    c = TestClient(create_app(Served([web_run]), token="s3cret"), raise_server_exceptions=False)
    for path in ("/", "/run/tiny", "/api/runs", "/api/openapi.json", "/static/app.js"):
        assert c.get(path, follow_redirects=False).status_code == 401, path
    assert c.get("/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/run/tiny?token=s3cret").status_code == 200
    assert c.get("/run/tiny/catalog").status_code == 200  # the cookie set by the first visit


def test_openapi_schema_lists_the_api(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert "/api/runs/{run}/saes/{sae}/features/{feature}" in paths
    assert not any(p.startswith("/run/") for p in paths)  # pages are not part of the API


def _events(text: str) -> list[tuple[str, dict]]:
    """Server-sent events -> (event, data) pairs."""
    import json

    out = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_steering_whole_and_streamed_give_the_same_completions(client: TestClient) -> None:
    body = {"prompt": "the code of", "features": [{"feature": 5, "scale": 20}], "max_new_tokens": 6}
    r = client.post("/api/runs/tiny/saes/relu-64/steer", json=body)
    assert r.status_code == 200, r.text
    whole = r.json()
    assert whole["interventions"] == [{"feature": 5, "scale": 20.0, "mode": "clamp"}]
    assert 0 < whole["steered"]["n_tokens"] <= 6 and whole["base"]["watched"][0]["feature"] == 5
    params = {"prompt": "the code of", "feature": 5, "scale": 20, "max_new_tokens": 6}
    s = client.get("/api/runs/tiny/saes/relu-64/steer/stream", params=params)
    assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
    events = _events(s.text)
    assert events[0][0] == "start" and events[-1][0] == "done"
    for which in ("base", "steered"):  # the streamed pieces add up to the completion
        pieces = "".join(d["text"] for e, d in events if e == "token" and d["which"] == which)
        assert pieces == whole[which]["text"] == events[-1][1][which]["text"]


def test_steering_inputs_are_bounded(client: TestClient) -> None:
    url = "/api/runs/tiny/saes/relu-64/steer"
    one = [{"feature": 1, "scale": 5}]
    cases = [
        ({"prompt": "x" * 2001, "features": one}, 422),
        ({"prompt": "hello", "features": [{"feature": 1}] * 9}, 422),
        ({"prompt": "hello", "features": one, "max_new_tokens": 1000}, 422),
        ({"prompt": "hello", "features": [{"feature": 1, "scale": 1e9}]}, 422),
        ({"prompt": "hello", "features": [{"feature": 64}]}, 400),
        ({"prompt": "   ", "features": one}, 400),
        ({"prompt": "the " * 300, "features": one, "max_new_tokens": 8}, 400),  # past the context
    ]
    for body, status in cases:
        r = client.post(url, json=body)
        assert r.status_code == status, (body, r.text[:300])
        assert r.json()["error"]
    s = client.get(url + "/stream", params={"prompt": "hi", "feature": [1, 2], "scale": [1, 2, 3]})
    assert s.status_code == 400 and "--scale once or once per" in s.json()["error"]


def test_analyse_a_text(client: TestClient) -> None:
    r = client.post("/api/runs/tiny/saes/relu-64/inspect", json={"text": "the code of paris", "per_token": 3})
    assert r.status_code == 200, r.text
    got = r.json()
    assert [t["token"] for t in got["tokens"]][:2] == [SCRIPT, " code"] or len(got["tokens"]) == 4
    assert all(len(t["features"]) <= 3 for t in got["tokens"]) and got["n_features"] == 64
    assert client.post("/api/runs/tiny/saes/relu-64/inspect", json={"text": " "}).status_code == 400
    page = client.get("/run/tiny/search", params={"text": "the code of paris", "sae": "relu-64"})
    assert page.status_code == 200 and 'class="tokfeats"' in page.text and SCRIPT not in page.text


def test_playground_page_steers_without_javascript(client: TestClient) -> None:
    assert 'id="steer-button"' in client.get(f"/run/tiny/relu-64/feature/{EXPLAINED}").text
    empty = client.get("/run/tiny/steer", params={"sae": "relu-64", "feature": EXPLAINED})
    assert empty.status_code == 200 and f'value="{EXPLAINED}"' in empty.text and SCRIPT not in empty.text
    params = {"sae": "relu-64", "feature": [str(EXPLAINED), ""], "scale": ["20", "10"],
              "prompt": "the code of", "max_new_tokens": 4, "go": "1"}  # fmt: skip
    page = client.get("/run/tiny/steer", params=params).text
    whole = client.post(
        "/api/runs/tiny/saes/relu-64/steer",
        json={
            "prompt": "the code of",
            "features": [{"feature": EXPLAINED, "scale": 20}],
            "max_new_tokens": 4,
        },
    ).json()
    assert "log-prob/token" in page and f"#{EXPLAINED} fires on" in page
    for which in ("base", "steered"):
        assert f'<span id="out-{which}">{escape(whole[which]["text"])}</span>' in page
    bad = client.get("/run/tiny/steer", params={**params, "feature": "99"}).text
    assert "relu-64 has no feature 99" in bad
    assert client.get("/run/tiny/steer", params={"feature": "x"}).status_code == 400


def test_report_and_browser_show_a_feature_the_same_way(
    client: TestClient, web_run: Path, tmp_path: Path
) -> None:
    from monosemantic.features.report import feature_page
    from monosemantic.web.state import ServedRun

    r = ServedRun("tiny", web_run)
    with r.connect() as con:
        feature_page(con, r, "relu-64", EXPLAINED, {("relu-64", EXPLAINED)}, tmp_path / "f.html")
    report = (tmp_path / "f.html").read_text(encoding="utf-8")
    web = client.get(f"/run/tiny/relu-64/feature/{EXPLAINED}").text

    def part(page: str, start: str, end: str) -> str:
        i = page.index(start)
        return page[i : page.index(end, i)]

    for start, end in [('<p class="meta">', "·"), ('<p class="explanation">', "</p>"),
                       ('<div class="contexts" id="top">', "</div>\n"), ('<svg class="hist"', "</svg>"),
                       ("<h2>Logit effects</h2>", "</div></div>")]:  # fmt: skip
        assert part(report, start, end) == part(web, start, end), start
    assert SCRIPT not in report and "&lt;script&gt;" in report
    assert "steer-button" not in report and "/run/" not in report  # no link to a server
