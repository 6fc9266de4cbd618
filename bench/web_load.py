"""A bounded load test of the feature browser: N concurrent clients for S seconds against
`monosemantic serve` in its own process on a loopback port, each sending, one after the other,
feature pages, full-text searches, concept searches and "analyse a text" requests (POST inspect)
in a fixed mix; p50/p99 latency and errors per kind.

    python bench/web_load.py RUN [--clients 50] [--seconds 60] [--sae relu-64] [--mix page=1] [--workers N]
    python bench/web_load.py --tiny [...]   # the web tests' tiny run, built in a temporary directory

The clients are asyncio tasks over httpx (one connection each), so that 50 of them cost the client
process little. A 503 (the model is busy for longer than the server lets a request wait: it refuses
at once) is counted apart and left out of the latencies; every other answer than 200, and every
timeout or dropped connection, is an error.
The test stops by itself: no new request after S seconds, each request times out after
``--timeout`` seconds, and the server is stopped at the end. Nothing is written into the run.
Writes the figures as JSON (``--json``) and prints a Markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
WORDS = ["the", "code", "paris", "select", "python", "return", "buffer overflow", "einstein", "class",
         "where", "import", "shell", "function", "country", "water"]  # fmt: skip
"""Search queries: the tiny run's vocabulary and words a real corpus has."""
TEXTS = ["the code of paris", "select from where", "def return import class", "einstein was in paris",
         "buffer overflow in the shell", "the population of the country grew"]  # fmt: skip
MIX = {"feature page": 8, "full-text search": 4, "concept search": 1, "inspect (POST)": 1}
"""Relative frequency of each kind by default: what a reader does most (the model-backed kinds
queue for the one model: one request at a time)."""
SHORT = {"page": "feature page", "search": "full-text search", "concept": "concept search",
         "inspect": "inspect (POST)"}  # fmt: skip


def parse_mix(text: str) -> dict[str, int]:
    """``page=8,search=4,concept=1,inspect=1`` -> weights by kind (kinds left out: 0)."""
    mix = dict.fromkeys(MIX, 0)
    for part in text.split(","):
        name, _, weight = part.partition("=")
        if name.strip() not in SHORT or not weight.strip().isdigit():
            raise SystemExit(f"--mix {text!r}: give NAME=WEIGHT pairs, names among {', '.join(SHORT)}")
        mix[SHORT[name.strip()]] = int(weight)
    return mix


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


def request(kind: str, run: str, sae: str, n_features: int, rng: random.Random) -> tuple[str, str, Any]:
    """(method, path, JSON body) of one request of ``kind``."""
    api = f"/api/runs/{run}/saes/{sae}"
    if kind == "feature page":
        return "GET", f"/run/{run}/{sae}/feature/{rng.randrange(n_features)}", None
    if kind == "full-text search":
        return "GET", f"{api}/search?q={rng.choice(WORDS)}", None
    if kind == "concept search":
        return "GET", f"{api}/concepts?q={rng.choice(WORDS)}", None
    return "POST", f"{api}/inspect", {"text": rng.choice(TEXTS)}


async def client(base: str, deadline: float, timeout: float, pick: Any, times: dict[str, list[float]],
                 errors: dict[str, list[str]], busy: dict[str, int]) -> None:  # fmt: skip
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=httpx.Limits(max_connections=1)) as c:
        while time.monotonic() < deadline:
            kind, (method, path, body) = pick()
            t0 = time.perf_counter()
            try:
                r = await c.request(method, path, json=body)
                status, why = r.status_code, f"{r.status_code} {path}: {r.text[:200]}"
            except httpx.HTTPError as e:
                status, why = 0, f"{type(e).__name__} {path}"
            if status == 503:  # refused at once: the model is busy for longer than the server lets one wait
                busy[kind] += 1
                continue
            times[kind].append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors[kind].append(why)


Load = tuple[dict[str, list[float]], dict[str, list[str]], dict[str, int], float]


async def load(base: str, run: str, sae: str, n_features: int, clients: int, seconds: float, timeout: float,
               seed: int, mix: dict[str, int]) -> Load:  # fmt: skip
    """Latencies (ms) and errors per kind, and the wall time, of ``clients`` clients for ``seconds``."""
    rng = random.Random(seed)
    kinds = [k for k, w in mix.items() for _ in range(w)]

    def pick() -> tuple[str, tuple[str, str, Any]]:
        kind = rng.choice(kinds)
        return kind, request(kind, run, sae, n_features, rng)

    times: dict[str, list[float]] = {k: [] for k, w in mix.items() if w}
    errors: dict[str, list[str]] = {k: [] for k, w in mix.items() if w}
    busy = {k: 0 for k, w in mix.items() if w}
    t0 = time.monotonic()
    deadline = t0 + seconds
    await asyncio.gather(
        *(client(base, deadline, timeout, pick, times, errors, busy) for _ in range(clients))
    )
    return times, errors, busy, time.monotonic() - t0


def wait_ready(base: str, server: subprocess.Popen[str], limit: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + limit
    while server.poll() is None and time.monotonic() < deadline:
        try:
            return list(httpx.get(base + "/api/runs", timeout=2).json())
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit(f"the server did not start: {server.stderr.read() if server.stderr else ''}")


def serve(run: Path, port: int, workers: int = 1) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "monosemantic", "serve", str(run), "--port", str(port),
         *(["--workers", str(workers)] if workers != 1 else [])],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def measure(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    from monosemantic.web.live import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(run, port, args.workers)
    try:
        name = wait_ready(base, server)[0]["name"]
        overview = httpx.get(f"{base}/api/runs/{name}", timeout=60).json()
        sizes = {d["name"]: d["n_features"] for d in overview["dictionaries"] if d["analysis"]}
        sae = args.sae or max(sizes, key=lambda s: sizes[s])
        # warm-up: the vocabulary, the model, the inspector and the embedder load once per server
        rng = random.Random(args.seed)
        for kind in (k for k, w in args.mix.items() if w):
            method, path, body = request(kind, name, sae, sizes[sae], rng)
            r = httpx.request(method, base + path, json=body, timeout=300)
            if r.status_code != 200:
                sys.exit(f"warm-up {kind} failed: {r.status_code} {r.text[:300]}")
        times, errors, busy, wall = asyncio.run(
            load(base, name, sae, sizes[sae], args.clients, args.seconds, args.timeout, args.seed, args.mix)
        )
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    results = {
        kind: {
            "requests": len(ts),
            "errors": len(errors[kind]),
            "busy_503": busy[kind],
            "p50_ms": percentile(ts, 50),
            "p99_ms": percentile(ts, 99),
            "max_ms": max(ts, default=float("nan")),
            "mean_ms": statistics.fmean(ts) if ts else float("nan"),
            "requests_per_s": len(ts) / wall,
            "first_errors": errors[kind][:5],
        }  # fmt: skip
        for kind, ts in times.items()
    }
    return {"run": str(run), "sae": sae, "n_features": sizes[sae], "clients": args.clients,
            "seconds": args.seconds, "wall_s": wall, "cpus": os.cpu_count(), "mix": args.mix,
            "results": results}  # fmt: skip


def table(out: dict[str, Any]) -> str:
    head = (f"{out['sae']} ({out['n_features']:,} features), {out['clients']} concurrent clients for "
            f"{out['wall_s']:.0f} s, {out['cpus']} CPUs\n\n"
            "| request | answered | errors | busy (503) | p50 (ms) | p99 (ms) | max (ms) | answered/s |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")  # fmt: skip
    rows = [f"| {k} | {r['requests']} | {r['errors']} | {r['busy_503']} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['requests_per_s']:.1f} |"
            for k, r in out["results"].items()]  # fmt: skip
    return "\n".join([head, *rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, nargs="?", help="an analysed run directory")
    ap.add_argument("--tiny", action="store_true", help="build and use the web tests' tiny run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument(
        "--timeout", type=float, default=60, help="seconds per request before it counts as an error"
    )
    ap.add_argument("--sae", default="", help="dictionary (default: the largest analysed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mix", type=parse_mix, default=MIX, help="default: page=8,search=4,concept=1,inspect=1")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--workers", type=int, default=1, help="serve --workers")
    args = ap.parse_args()
    if (args.run is None) == (not args.tiny):
        ap.error("give a run directory or --tiny")
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            sys.path.insert(0, str(ROOT))
            from tests.web_run import build

            args.run = build(Path(tmp))
        out = measure(args.run, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(table(out))
    for kind, r in out["results"].items():
        for e in r["first_errors"]:
            print(f"{kind}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
