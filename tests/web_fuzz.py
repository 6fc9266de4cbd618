"""Schemathesis against the browser's OpenAPI schema: requests generated from the schema (valid
ones, and invalid ones that the API must refuse with a 4xx), each answer checked for a server
error, an undocumented status, a wrong content type, a body or header the schema does not allow,
and invalid input accepted. Failures are counted, not raised, so that a run reports them all.

    python -m tests.web_fuzz [--examples 250]

builds the web tests' tiny run in a temporary directory, serves it with uvicorn on a loopback port
and sends ``--examples`` requests per operation and generation mode (an operation with few
possible inputs gets fewer; derandomized: the same requests every run); it prints the counts
and exits 1 on any failure.
``tests/test_web_schema.py`` runs the same with fewer examples, in process.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from monosemantic.web.app import create_app
from monosemantic.web.state import Served

CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
"""Every answer: no 5xx, and status, content type, headers and body as the schema documents them."""
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass
class Outcome:
    """What a fuzzing run sent and what came back."""

    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)
    """operations answered 200 at least once"""
    failures: list[str] = field(default_factory=list)
    """one line per failed check: operation, check, curl command"""

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.by_status.items() if status >= 500)


def warm_up(call: Any) -> None:
    """The first request builds the schema; UMAP compiles itself on first use (numba): not per request."""
    call("/api/openapi.json")
    for sae in ("relu-16", "relu-64"):
        call(f"/api/runs/tiny/saes/{sae}/map")


def fuzz(schema: Any, examples: int, base_url: str | None = None) -> Outcome:
    """Send up to ``examples`` generated requests per operation and mode; count and check the answers."""
    out = Outcome()
    for result in schema.get_all_operations():
        for mode in MODES:
            # no invalid request exists for an operation without parameters
            with contextlib.suppress(Unsatisfiable):
                _fuzz_one(result.ok(), mode, examples, base_url, out)
    return out


def _fuzz_one(op: Any, mode: Any, examples: int, base_url: str | None, out: Outcome) -> None:
    checks = CHECKS + [negative_data_rejection] * (mode == schemathesis.GenerationMode.NEGATIVE)

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, timeout=60)
        out.requests += 1
        out.by_status[response.status_code] += 1
        if response.status_code == 200:
            out.answered.add(case.operation.label)
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            for f in group.exceptions:
                out.failures.append(f"{case.operation.label} [{mode.value}] {f.title}: "
                                    f"{f.message[:300]} :: {case.as_curl_command()}")  # fmt: skip

    check()


def report(out: Outcome, seconds: float) -> str:
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(out.by_status.items()))
    lines = [f"{out.requests} requests in {seconds:.0f} s ({statuses}); {out.server_errors} server errors; "
             f"{len(out.failures)} failed checks"]  # fmt: skip
    return "\n".join(lines + out.failures[:50])


def main() -> None:
    import httpx

    from monosemantic.web.live import live_server
    from tests.web_run import build

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=250, help="requests per operation and mode, at most")
    ap.add_argument(
        "--run", type=Path, help="an analysed run built by `python -m tests.web_run DIR` (DIR/tiny)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or build(Path(tmp))
        # generation and concept search stay quick: thousands of requests, not thousands of MiniLM reranks
        app = create_app(Served([run], max_new_tokens=4, semantic=False))
        with live_server(app) as base:
            warm_up(lambda p: httpx.get(base + p, timeout=120))
            schema = schemathesis.openapi.from_url(base + "/api/openapi.json")
            t0 = time.perf_counter()
            out = fuzz(schema, args.examples, base_url=base)
            print(report(out, time.perf_counter() - t0))
    sys.exit(1 if out.failures or out.server_errors else 0)


if __name__ == "__main__":
    main()
