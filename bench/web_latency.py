"""Latency of the feature browser under load: p50/p99 of a feature page and of a full-text search
with N concurrent clients, against `monosemantic serve` in its own process.

    python bench/web_latency.py runs/demo [--clients 50] [--requests 20] [--sae relu-16384] [--workers 2]

Each client (a thread with its own HTTP connection) requests, one after the other, feature pages
of random features, then searches for words from a fixed list; the server is started with the
run's path exactly as a user would (`python -m monosemantic serve RUN --port P`), so that client
and server do not share a Python interpreter. Also measured: the server's CPU time per request
(its processes' user + system time over each kind's load) and the load average before and after,
since the clients run on the same machine. Writes bench/results/web-latency-<run>.json (or
``--json``) and prints a Markdown table. Nothing is written into the run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

WORDS = ["the", "function", "return", "country", "population", "import", "human rights", "SQL", "error",
         "water", "année", "buffer", "class", "president", "language"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def load(base: str, paths: list[str], clients: int) -> tuple[list[float], int]:
    """Request ``paths`` spread over ``clients`` threads; (latencies in ms, non-200 answers)."""
    chunks = [paths[i::clients] for i in range(clients)]
    times: list[float] = []
    bad = [0]
    lock = threading.Lock()
    start = threading.Barrier(clients)

    def client(mine: list[str]) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            start.wait()
            for p in mine:
                t0 = time.perf_counter()
                r = c.get(p)
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    times.append(dt)
                    bad[0] += r.status_code != 200

    threads = [threading.Thread(target=client, args=(ch,)) for ch in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, bad[0]


def workers_flag(n: int) -> list[str]:
    """``serve``'s ``--workers`` option, left out for 1 (a server from before it existed)."""
    return ["--workers", str(n)] if n != 1 else []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children (the workers), so far."""
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=20, help="requests per client and kind")
    ap.add_argument("--sae", default="", help="dictionary (default: the largest analysed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="serve --workers")
    ap.add_argument(
        "--json", type=Path, help="write the figures here (default: bench/results/web-latency-RUN.json)"
    )
    args = ap.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monosemantic",
            "serve",
            str(args.run),
            "--port",
            str(port),
            *workers_flag(args.workers),
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        runs = None
        while runs is None and server.poll() is None:
            try:
                runs = httpx.get(base + "/api/runs", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        if runs is None:
            sys.exit(f"the server stopped: {server.stderr.read() if server.stderr else ''}")
        run = runs[0]["name"]
        overview = httpx.get(f"{base}/api/runs/{run}", timeout=30).json()
        sizes = {d["name"]: d["n_features"] for d in overview["dictionaries"] if d["analysis"]}
        sae = args.sae or max(sizes, key=lambda s: sizes[s])
        rng = random.Random(args.seed)
        n = args.clients * args.requests
        kinds = {
            "feature page": [f"/run/{run}/{sae}/feature/{rng.randrange(sizes[sae])}" for _ in range(n)],
            "full-text search": [
                f"/api/runs/{run}/saes/{sae}/search?q={rng.choice(WORDS)}" for _ in range(n)
            ],
        }
        httpx.get(base + kinds["feature page"][0], timeout=60)  # first request: vocabulary cached
        results = {}
        for kind, paths in kinds.items():
            load_before, cpu0 = os.getloadavg()[0], cpu_seconds(server.pid)
            t0 = time.perf_counter()
            times, bad = load(base, paths, args.clients)
            wall = time.perf_counter() - t0
            results[kind] = {
                "load_before": load_before,
                "load_after": os.getloadavg()[0],
                "server_cpu_ms_per_request": (cpu_seconds(server.pid) - cpu0) * 1000 / len(times),
                "requests": len(times),
                "errors": bad,
                "p50_ms": percentile(times, 50),
                "p99_ms": percentile(times, 99),
                "mean_ms": statistics.fmean(times),
                "requests_per_s": len(times) / wall,
            }
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    out = {"run": str(args.run), "sae": sae, "n_features": sizes[sae], "clients": args.clients,
           "workers": args.workers, "cpus": os.cpu_count(), "results": results}  # fmt: skip
    dest = args.json or Path(__file__).parent / "results" / f"web-latency-{args.run.resolve().name}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=1) + "\n")
    print(f"{sae} ({sizes[sae]:,} features), {args.clients} concurrent clients, {args.workers} server "
          f"worker(s), {os.cpu_count()} CPUs\n")  # fmt: skip
    print(
        "| request | requests | errors | p50 (ms) | p99 (ms) | requests/s | server CPU/request (ms) | load |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for kind, r in results.items():
        print(f"| {kind} | {r['requests']} | {r['errors']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['requests_per_s']:.0f} | {r['server_cpu_ms_per_request']:.1f} | "
              f"{r['load_before']:.1f} → {r['load_after']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
