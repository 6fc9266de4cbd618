"""The feature browser's routes on an analysed tiny run: every page and API answer, the same
numbers as the database, escaping, path traversal, bounds, the token, error pages."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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
