"""Schemathesis against the API's OpenAPI schema: at least 1,000 generated requests, none answered
with a server error (5xx). Bounded: a fixed number of examples per operation, derandomized."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from monosemantic.web.app import create_app
from monosemantic.web.state import Served
from tests.web_run import make_analysed_run

pytestmark = pytest.mark.slow  # a thousand generated requests

MIN_REQUESTS = 1_000
EXAMPLES = 250
"""Examples per operation, at most (an operation with few possible inputs gets fewer)."""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path):
    run = make_analysed_run(tmp_path_factory.mktemp("web") / "tiny", tiny_llama_dir, tiny_corpus)
    # generation and concept search stay quick: a thousand requests, not a thousand MiniLM reranks
    return create_app(Served([run], max_new_tokens=4, semantic=False))


def test_generated_requests_never_get_a_server_error(app) -> None:
    client = TestClient(app)
    client.get("/api/openapi.json")  # the app builds its schema on the first request
    for sae in ("relu-16", "relu-64"):  # UMAP compiles itself on first use (numba): not per request
        assert client.get(f"/api/runs/tiny/saes/{sae}/map").status_code == 200
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app)
    seen: list[tuple[str, int]] = []
    for result in schema.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        def check(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            seen.append((case.operation.label, response.status_code))
            assert response.status_code < 500, (case.as_curl_command(), response.text[:500])

        check()
    by_status: dict[int, int] = {}
    for _, status in seen:
        by_status[status] = by_status.get(status, 0) + 1
    assert len(seen) >= MIN_REQUESTS, by_status
    assert by_status.get(200, 0) > len(seen) // 4, by_status  # most requests reach the real code
    answered = {label for label, status in seen if status == 200}
    for label in ("POST /api/runs/{run}/saes/{sae}/steer", "GET /api/runs/{run}/saes/{sae}/steer/stream",
                  "POST /api/runs/{run}/saes/{sae}/inspect"):  # fmt: skip
        assert label in answered, label  # the model-backed routes ran, not only their checks
