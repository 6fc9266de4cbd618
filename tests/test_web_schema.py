"""Schemathesis against the API's OpenAPI schema (``tests/web_fuzz.py``): generated requests, valid
and invalid, none answered with a server error, an undocumented status, or a body, header or
content type the schema does not allow. Bounded: a fixed number of examples per operation and
mode, derandomized. ``MONOSEMANTIC_FUZZ_EXAMPLES=250`` sends the thousands that
``python -m tests.web_fuzz`` sends against a real server (docs/reliability.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient

from monosemantic.web.app import create_app
from monosemantic.web.state import Served
from tests.web_fuzz import fuzz, warm_up
from tests.web_run import make_analysed_run

pytestmark = pytest.mark.slow  # hundreds of generated requests

EXAMPLES = int(os.environ.get("MONOSEMANTIC_FUZZ_EXAMPLES", "25"))
"""Examples per operation and mode, at most (an operation with few possible inputs gets fewer)."""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, tiny_corpus: Path):
    run = make_analysed_run(tmp_path_factory.mktemp("web") / "tiny", tiny_llama_dir, tiny_corpus)
    # generation and concept search stay quick: hundreds of requests, not hundreds of MiniLM reranks
    return create_app(Served([run], max_new_tokens=4, semantic=False))


def test_generated_requests_get_documented_answers_and_no_server_error(app) -> None:
    client = TestClient(app, raise_server_exceptions=False)
    warm_up(client.get)
    out = fuzz(schemathesis.openapi.from_asgi("/api/openapi.json", app), EXAMPLES)
    assert out.server_errors == 0 and not out.failures, "\n".join(out.failures[:20])
    assert out.requests >= 12 * EXAMPLES, out.by_status
    assert out.by_status[200] > out.requests // 5, out.by_status  # many requests reach the real code
    for label in ("POST /api/runs/{run}/saes/{sae}/steer", "GET /api/runs/{run}/saes/{sae}/steer/stream",
                  "POST /api/runs/{run}/saes/{sae}/inspect"):  # fmt: skip
        assert label in out.answered, label  # the model-backed routes ran, not only their checks
