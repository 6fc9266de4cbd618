"""kill -9 at random points (issue 17, part 1): every stage on a tiny run is started, SIGKILLed after
a seeded random delay, rerun until it finishes, and its artifacts compared with an uninterrupted
run's. ``python -m tests.chaos --kills 20`` (``make chaos``) prints a table for docs/reliability.md;
tests/test_chaos.py runs a few kills per stage in CI.

The stages run in forked children of this process (the imports are paid once, so that a delay
lands in the stage's work rather than in Python's start-up); the 2-rank training runs under a real
torchrun whose whole process group is killed."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.helpers import (
    TRAIN,
    WINDOW,
    fake_llm_server,
    harvest_args,
    main_exit_code,
    save_tiny,
    write_tiny_corpus,
)

TIMING = {"tokens_per_s", "seconds", "peak_rss_mb", "flops_per_s", "train", "harvest", "elapsed_s", "rate"}
TIMING |= {"_crc32"}  # a JSON file's checksum covers its timings too
SWEEP = ["--levels", "2", "--decades", "0.5", "--sizes-per-level", "3", "--min-flops", "3e7"]
SWEEP += ["--batch-size", "64", "--eval-tokens", "512", "--max-extend", "1"]


def fork_cli(args: list[str], kill_after: float | None = None) -> tuple[int | None, float]:
    """Run ``monosemantic ARGS`` in a forked child (output discarded); SIGKILL it after
    ``kill_after`` seconds if still running. Returns (exit code, or None when killed; seconds)."""
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.argv = ["monosemantic", *args]
        code = 1
        try:
            code = main_exit_code()
        finally:
            os._exit(code)
    if kill_after is not None:
        deadline = start + kill_after
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), time.monotonic() - start
            time.sleep(0.002)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return (None if code == -signal.SIGKILL else code), time.monotonic() - start


def _torchrun_log_tail(lines: int = 15) -> str:
    log = Path(tempfile.gettempdir()) / f"chaos-torchrun-{os.getpid()}.log"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def torchrun_cli(args: list[str], kill_after: float | None = None) -> tuple[int | None, float]:
    """``torchrun --nproc-per-node 2 -m monosemantic ARGS``; SIGKILL the agent and both ranks after
    ``kill_after`` seconds, as pulling the plug would."""
    start = time.monotonic()
    exe = str(Path(sys.executable).with_name("torchrun"))
    log = Path(tempfile.gettempdir()) / f"chaos-torchrun-{os.getpid()}.log"
    proc = subprocess.Popen(
        [exe, "--standalone", "--nproc-per-node", "2", "-m", "monosemantic", *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),  # kept for the message when a run fails
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        code = proc.wait(timeout=kill_after)
        return code, time.monotonic() - start
    except subprocess.TimeoutExpired:
        # torch.distributed.elastic starts each rank in a session of its own: kill the tree
        import psutil

        tree = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait()
        psutil.wait_procs(tree, timeout=30)
        return None, time.monotonic() - start


# --- what is compared --------------------------------------------------------------------------


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def shards(run: Path) -> dict[str, Any]:
    m = json.loads((run / "activations" / "manifest.json").read_text())
    files = {p.name: p.read_bytes() for p in (run / "activations").glob("shard-*.safetensors")}
    return {"manifest": _strip(m), "files": files}


def dictionaries(run: Path) -> dict[str, Any]:
    """The saved weights, byte for byte, and cfg.json without timings."""
    out = {}
    for d in sorted((run / "saes").iterdir()):
        out[d.name] = (
            (d / "sae.safetensors").read_bytes(),
            _strip(json.loads((d / "cfg.json").read_text())),
        )
    return out


def metrics(run: Path) -> dict[str, Any]:
    return {
        p.parent.name: _strip(json.loads(p.read_text()))
        for p in sorted((run / "saes").glob("*/metrics.json"))
    }


QUERIES = [
    "SELECT sae, id, n_fired, freq, max_act, mean_act, histogram, promoted, suppressed, explanation, "
    "explainer, score_auc, score_bacc FROM features ORDER BY sae, id",
    "SELECT sae, feature, kind, rank, band, activation, seq, start, peak, acts FROM contexts "
    "ORDER BY sae, feature, kind, rank",
    "SELECT corpus, seq, tokens FROM sequences ORDER BY corpus, seq",
    "SELECT sae, seqs_done, tokens_done, finished FROM analyses ORDER BY sae",
    "SELECT * FROM neighbors ORDER BY sae, feature, other_sae, other",
    "SELECT rowid, text FROM contexts_fts WHERE contexts_fts MATCH 'paris' ORDER BY rowid",
    "SELECT sae, feature, explanation FROM explanations_fts ORDER BY sae, feature",
]


def database(run: Path) -> dict[str, Any]:
    con = sqlite3.connect(run / "features.sqlite")
    try:
        out: dict[str, Any] = {q: [tuple(r) for r in con.execute(q)] for q in QUERIES}
        stats = con.execute("SELECT sae, stats FROM analyses ORDER BY sae").fetchall()
        out["stats"] = [(s, _strip(json.loads(t or "{}"))) for s, t in stats]
        return out
    finally:
        con.close()


def fits(run: Path) -> dict[str, Any]:
    points = {
        p.parent.name: _strip(json.loads(p.read_text()))
        for p in (run / "scaling" / "points").glob("*/result.json")
    }
    return {"fits": _strip(json.loads((run / "scaling" / "fits.json").read_text())), "points": points}


# --- the stages ---------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    before: str
    """the prepared run this stage starts from ('' for an empty directory)"""
    args: Callable[[Path], list[str]]
    compare: Callable[[Path], Any]
    runner: Callable[..., tuple[int | None, float]] = fork_cli


@dataclass
class Tally:
    tried: int = 0
    killed: int = 0
    survived: int = 0
    failures: list[str] = field(default_factory=list)


class Chaos:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.model = save_tiny("llama", root / "model")
        self.corpus = write_tiny_corpus(root / "corpus.jsonl")
        self.prepared: dict[str, Path] = {}

    def stages(self, torchrun: bool = True) -> list[Stage]:
        def train(arch: str) -> Callable[[Path], list[str]]:
            k = [] if arch in ("relu", "jumprelu") else ["--k", "8"]  # --k applies to the TopK family
            opts = [*TRAIN, "--arch", arch, *k, "--checkpoint-every", "3"]
            return lambda r: ["train", "--out", str(r), *opts]

        explain = ["--sae", "relu-64", "--features", "6", "--explainer-url", self.url]
        out = [Stage("harvest", "", lambda r: harvest_args(self.model, self.corpus, r), shards)]
        for arch in ("relu", "topk", "batchtopk", "jumprelu", "matryoshka"):
            out.append(Stage(f"train {arch}", "harvested", train(arch), dictionaries))
        if torchrun:
            out.append(
                Stage("train relu, 2-rank torchrun", "harvested", train("relu"), dictionaries, torchrun_cli)
            )
        out += [
            Stage("evaluate", "trained", lambda r: ["evaluate", str(r), "--loss-sequences", "8"], metrics),
            Stage("analyze", "trained", lambda r: ["analyze", str(r), *WINDOW, "--checkpoint-every", "8"],
                  database),
            Stage("explain", "analysed", lambda r: ["explain", str(r), *explain], database),
            Stage("scaling", "harvested", lambda r: ["scaling", str(r), *SWEEP], fits),
        ]  # fmt: skip
        return out

    def prepare(self, name: str) -> Path:
        """The runs stages start from, built once (uninterrupted)."""
        if name in self.prepared:
            return self.prepared[name]
        run = self.root / "prepared" / name
        steps = {
            "harvested": ("", lambda r: harvest_args(self.model, self.corpus, r)),
            "trained": ("harvested", lambda r: ["train", "--out", str(r), *TRAIN]),
            "analysed": ("trained", lambda r: ["analyze", str(r), *WINDOW]),
        }
        parent, args = steps[name]
        if parent:
            shutil.copytree(self.prepare(parent), run)
        code, _ = fork_cli(args(run))
        assert code == 0, f"preparing {name} failed"
        self.prepared[name] = run
        return run

    def fresh(self, stage: Stage, tag: str) -> Path:
        run = self.root / "runs" / f"{stage.name.replace(' ', '_').replace(',', '')}-{tag}"
        shutil.rmtree(run, ignore_errors=True)
        if stage.before:
            shutil.copytree(self.prepare(stage.before), run)
        return run

    def run_stage(self, stage: Stage, kills: int, seed: int) -> Tally:
        ref = self.fresh(stage, "ref")
        code, seconds = stage.runner(stage.args(ref))
        if code != 0 and stage.runner is torchrun_cli:
            # a 2-rank gloo start or exit can fail on a loaded machine ("terminate called without an
            # active exception" at teardown): the reference is not what is tested, so try it once more
            shutil.rmtree(ref)
            ref = self.fresh(stage, "ref")
            code, seconds = stage.runner(stage.args(ref))
        assert code == 0, f"{stage.name}: the uninterrupted run failed ({code}): {_torchrun_log_tail()}"
        want = stage.compare(ref)
        rng = random.Random(f"{seed}-{stage.name}")
        tally = Tally()
        for i in range(kills):
            run = self.fresh(stage, f"k{i}")
            delay = rng.uniform(0.0, seconds)
            tally.tried += 1
            code, _ = stage.runner(stage.args(run), kill_after=delay)
            tally.killed += code is None
            for _ in range(5):  # rerun until done
                if code == 0:
                    break
                code, _ = stage.runner(stage.args(run))
            if code != 0:
                tally.failures.append(f"kill {i} at {delay:.2f}s: reruns exit {code}")
            elif stage.compare(run) != want:
                tally.failures.append(f"kill {i} at {delay:.2f}s: artifacts differ")
            else:
                tally.survived += 1
                shutil.rmtree(run, ignore_errors=True)
        return tally


def campaign(
    kills: int,
    seed: int,
    only: list[str] | None = None,
    torchrun: bool = True,
    torchrun_kills: int | None = None,
) -> dict[str, Tally]:
    """Run every stage with ``kills`` kill points each; returns a tally per stage."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, fake_llm_server() as url:
        chaos = Chaos(Path(tmp), url)
        out = {}
        for stage in chaos.stages(torchrun):
            if only and not any(o in stage.name for o in only):
                continue
            n = torchrun_kills if stage.runner is torchrun_cli and torchrun_kills is not None else kills
            out[stage.name] = chaos.run_stage(stage, n, seed)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="kill points per stage")
    ap.add_argument("--torchrun-kills", type=int, default=None, help="kill points for the torchrun stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated parts of stage names")
    a = ap.parse_args()
    start = time.time()
    tallies = campaign(
        a.kills, a.seed, [s for s in a.only.split(",") if s] or None, torchrun_kills=a.torchrun_kills
    )
    print("| stage | kills tried | killed mid-run | survived (artifacts equal) |")
    print("| --- | ---: | ---: | ---: |")
    for name, t in tallies.items():
        print(f"| {name} | {t.tried} | {t.killed} | {t.survived} |")
    for name, t in tallies.items():
        for f in t.failures:
            print(f"FAILED {name}: {f}")
    print(f"({time.time() - start:.0f} s, seed {a.seed})")
    sys.exit(1 if any(t.failures for t in tallies.values()) else 0)


if __name__ == "__main__":
    main()
