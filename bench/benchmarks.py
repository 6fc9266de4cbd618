"""``make bench``: the side-by-side trainer benchmark (compare_trainers.py) with repeats, the
ratios to each peer and the matmul roofline measured in the same run, written to
docs/benchmarks.md. Run it from the environment that holds the peers (.venv-peers)::

    OMP_NUM_THREADS=2 .venv-peers/bin/python bench/benchmarks.py --run-dir runs/demo --threads 2 --repeats 3

The roofline: torch.mm at the encoder's shape (B, d) x (d, n), the largest matmul of every
trainer's step, timed in this process; each trainer's FLOP/s (the matmul FLOPs of its step,
``train.train_flops_per_token``, times its tokens/s) as a fraction of it."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare_trainers  # noqa: E402

from monosemantic.fsio import write_text  # noqa: E402
from monosemantic.train import train_flops_per_token  # noqa: E402

RATIOS = (
    ("ours-relu", "saelens-standard"),
    ("ours-topk", "sparsify-topk"),
    ("ours-topk", "saelens-topk"),
    ("ours-topk", "ours-topk-plain"),  # the fast TopK step against its plain autograd reference
)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def mm_flops(batch: int, d: int, n: int, threads: int, repeats: int = 7) -> float:
    """FLOP/s of torch.mm (batch, d) x (d, n) on this machine now (median of ``repeats``)."""
    torch.set_num_threads(threads)
    x, w = torch.randn(batch, d), torch.randn(d, n)
    x @ w
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        x @ w
        times.append(time.perf_counter() - t0)
    return 2 * batch * d * n / statistics.median(times)


def arch_of(trainer: str) -> str:
    return "relu" if trainer.endswith(("relu", "standard")) else "topk"


def ratio_rows(rows: dict[tuple[str, int], dict], sizes: list[int]) -> list[str]:
    """One markdown row per (ours, peer, size) measured."""
    out = []
    for ours, peer in RATIOS:
        for n in sizes:
            a, b = rows.get((ours, n)), rows.get((peer, n))
            if a and b:
                out.append(
                    f"| {ours} | {peer} | {n:,} | {a['tokens_per_s'] / b['tokens_per_s']:.2f}x | "
                    f"{b['cpu_ms_per_step'] / a['cpu_ms_per_step']:.2f}x | "
                    f"{a['variance_explained']:.3f} | {b['variance_explained']:.3f} |"
                )
    return out


def _json_lines(cmd: list[str]) -> list[dict]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return [{"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def overhead_lines(rows: list[dict], sae: str) -> list[str]:
    """Markdown lines for bench/overheads.py's JSON lines."""
    lines = []
    for row in rows:
        if "harvest" in row:
            h = row["harvest"]
            lines.append(
                f"- harvest: {h['harvest_tok_s']:,.0f} tokens/s against {h['bare_forward_tok_s']:,.0f}"
                f" for the bare forward pass to the layer ({h['tokens']:,} tokens): {h['overhead']:+.1%}."
            )
        elif "analyze" in row:
            a = row["analyze"]
            lines.append(
                f"- analyze ({sae}): {a['analyze_tok_s']:,.0f} tokens/s against "
                f"{a['read_encode_tok_s']:,.0f} for reading the store and encoding ({a['tokens']:,} tokens): "
                f"{a['overhead']:+.1%}."
            )
        else:
            lines.append(f"- not measured: {row.get('error')}")
    return lines


def memory_lines(rows: list[dict]) -> list[str]:
    """A markdown table for bench/memory_curve.py's JSON lines."""
    lines = [
        "| store tokens | store MiB | seconds | peak RSS MiB | RSS over time (s: MiB) |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| not measured: {row['error']} | | | | |")
            continue
        curve = ", ".join(f"{t:.0f}: {r}" for t, r in row["curve"][::4])
        lines.append(
            f"| {row['store_tokens']:,} | {row['store_mib']:,} | {row['seconds']:.0f} | "
            f"{row['peak_rss_mib']:,} | {curve} |"
        )
    return lines


def side_measurements(args: argparse.Namespace) -> list[str]:
    """The harvest/analyze overheads and the training-memory curve, as markdown lines; run with
    ``args.side_python`` (the project's environment, which has the default model)."""
    lines = ["## Stage overheads", "", f"Load before: `{uptime()}`.", ""]
    cmd = [
        args.side_python,
        str(HERE / "overheads.py"),
        "--run-dir",
        args.run_dir,
        "--sae",
        args.overhead_sae,
    ]
    lines += overhead_lines(_json_lines(cmd), args.overhead_sae)
    lines += ["", "## Training memory against the store's size", "", f"Load before: `{uptime()}`.", ""]
    lines += memory_lines(
        _json_lines([args.side_python, str(HERE / "memory_curve.py"), "--tokens", args.memory_tokens])
    )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default="runs/demo")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=20_480)
    ap.add_argument("--sizes", default="2048,16384")
    ap.add_argument("--trainers", default=",".join([*compare_trainers.DEFAULT_TRAINERS, "ours-topk-plain"]))
    ap.add_argument("--out", default="docs/benchmarks.md")
    ap.add_argument(
        "--overhead-sae", default="relu-2048", help="dictionary of the run for the analyze overhead"
    )
    ap.add_argument(
        "--memory-tokens",
        default="500000,2000000",
        help="synthetic store sizes for the training-memory curve (the issue asks 100M: 115 GB of float16, "
        "more than this machine's disk; the peak should not grow with the store)",
    )
    ap.add_argument(
        "--side-python",
        default=sys.executable,
        help="interpreter for the overhead and memory measurements (the project's, with the default model)",
    )
    ap.add_argument("--no-side", action="store_true", help="leave out the overhead and memory sections")
    args = ap.parse_args()
    results = HERE / "results"
    load_before = uptime()
    argv = [
        "--run-dir", args.run_dir, "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--tokens", str(args.tokens), "--sizes", args.sizes, "--trainers", args.trainers,
        "--out", str(results),
    ]  # fmt: skip
    compare_trainers.main(argv)
    report = json.loads(sorted(results.glob("compare-*.json"), key=os.path.getmtime)[-1].read_text())
    rows = {(r["trainer"], r["n_features"]): r for r in report["results"]}
    d, batch, k = (
        report["store"]["d_model"],
        rows[next(iter(rows))]["batch_size"],
        rows[next(iter(rows))]["k"],
    )
    sizes = sorted({n for _, n in rows})
    peak = {n: mm_flops(batch, d, n, args.threads) for n in sizes}
    load_after = uptime()
    env = report["environment"]
    versions = ", ".join(f"{name} {v}" for name, v in env["versions"].items() if v)
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (bench/benchmarks.py); the numbers of one run, all measured side by side.",
        "",
        f"- Machine: {env['cpu']}, {env['cpu_count']} cores, {args.threads} torch threads; no GPU was lent "
        "to this measurement.",
        f"- Versions: {versions}, Python {env['python']}.",
        f"- Load (`uptime`) before: `{load_before}`; after: `{load_after}`. The machine is shared: "
        "absolute times move ±15% and more with the load; the ratios, measured side by side, move less.",
        f"- Command: `OMP_NUM_THREADS={args.threads} .venv-peers/bin/python bench/benchmarks.py "
        + " ".join(sys.argv[1:])
        + "`",
        f"- Store: `{report['store']['run_dir']}` ({report['store']['model']} "
        f"layer {report['store']['layer']}, "
        f"d = {d}); {args.tokens:,} training tokens per dictionary in batches of {batch}, each training "
        f"repeated {args.repeats} times from a fresh dictionary: tokens/s is the median; the quality "
        f"columns are the last repeat's on the {report['store']['eval_tokens']:,} held-out tokens.",
        "",
        compare_trainers.markdown_table(report["results"]),
        "",
        "## Ratios to each peer (medians over repeats)",
        "",
        "Wall: tokens/s ours / peer. CPU: the peer's CPU ms per step / ours (process CPU time of all "
        "threads), which other load on the machine moves less than wall time.",
        "",
        "| ours | peer | features | wall ratio | CPU ratio | VE ours | VE peer |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += ratio_rows(rows, sizes)
    lines += [
        "",
        "## Roofline: each trainer's matmul FLOP/s as a fraction of torch.mm at the SAE's shape",
        "",
        "torch.mm (B, d) x (d, n) measured in the same run: "
        + ", ".join(f"n = {n:,}: {peak[n] / 1e9:.1f} GFLOP/s" for n in sizes)
        + ". A step's FLOPs count its matmuls (ReLU 12·d·n per token; TopK 6·d·(n + k): the sparse "
        "decoder and the sparse encoder gradient do no dense work), the same nominal count for every "
        "library: a step that skips work the count includes (our ReLU's sparse products once L0 < 0.2·n, "
        "column gathering of features silent in the batch) shows above 100%.",
        "",
        "| trainer | features | GFLOP/s | of torch.mm |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        flops = train_flops_per_token(d, r["n_features"], arch_of(r["trainer"]), k) * r["tokens_per_s"]
        share = flops / peak[r["n_features"]]
        lines.append(f"| {r['trainer']} | {r['n_features']:,} | {flops / 1e9:.1f} | {share:.0%} |")
    lines += ["", *([] if args.no_side else side_measurements(args)), ""]
    write_text(Path(args.out), "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
