"""Side-by-side SAE trainer benchmark: monosemantic vs SAELens vs EleutherAI's sparsify.

Every trainer gets the same normalised batches from one monosemantic activation store
(``ActivationStore.batches(batch_size, seed, buffer_shards)``), the same number of tokens, batch
size, dictionary size, learning rate and LR schedule, and a comparable sparsity setting (the same
λ for the ReLU/L1 dictionaries, the same k for the TopK ones). For each (trainer, size) it reports

- tokens/s of the training loop, timing only the step calls (the batches are in memory first),
  and the process CPU time per step (all threads; less sensitive to other load on the machine);
- peak RSS while the dictionary is built and trained (the kernel's high-water mark, reset just
  before), and that peak minus the RSS before it (imports, batches and eval set are the baseline);
- MSE (‖x − x̂‖² summed over d, mean over tokens, in the normalised space), variance explained
  (1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖²), L0 and the fraction of features that never fire, on the
  store's held-out eval split, using each library's own encode/decode.

Each (trainer, size) runs in a fresh subprocess so that RSS and allocator state do not leak
between them. Run it from the venv that holds all three libraries (see bench/README.md)::

    bench/.venv-others/bin/python bench/compare_trainers.py --run-dir runs/demo
    bench/.venv-others/bin/python bench/compare_trainers.py --sizes 2048 --tokens 20000 \\
        --trainers ours-relu,saelens-standard

Trainers: ours-relu, ours-topk, saelens-standard, saelens-topk, sparsify-topk (the default set),
plus saelens-topk-sparse (SAELens's sparse-COO decoder, which on CPU works only without its
decoder-norm rescaling) and sparsify-topk-signum (sparsify's default optimizer, schedule-free
SignSGD, and its default LR instead of the shared Adam recipe).

Writes bench/results/compare-<date>.json and .md and prints the table. On a machine that other
work shares, pass --threads 1: oversubscribed OpenMP threads make every timing meaningless.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from monosemantic.activations import ActivationStore
from monosemantic.config import TrainConfig, for_arch
from monosemantic.fsio import write_text
from monosemantic.train import dead_window, lr_at

DEFAULT_TRAINERS = ("ours-relu", "ours-topk", "saelens-standard", "saelens-topk", "sparsify-topk")
EXTRA_TRAINERS = ("ours-topk-plain", "saelens-topk-sparse", "sparsify-topk-signum")
HERE = Path(__file__).resolve().parent
WARMUP, DECAY = 0.05, 0.2  # λ warm-up and LR decay fractions, as in monosemantic's defaults


@dataclass
class Job:
    """One (trainer, size) measurement; travels to the worker subprocess as JSON."""

    trainer: str
    n_features: int
    run_dir: str
    tokens: int
    batch_size: int
    lr: float
    l1_coeff: float
    k: int
    seed: int
    buffer_shards: int
    threads: int
    dead_window: int
    """tokens without firing after which a feature counts as dead (AuxK), the same for every trainer"""
    out: str
    repeats: int = 1
    """trainings from a fresh dictionary, timed alike: the timings are their medians"""

    @property
    def n_steps(self) -> int:
        return max(1, self.tokens // self.batch_size)


@dataclass
class Trainer:
    """What the benchmark needs from a library: one training step on a (B, d) batch, and its own
    encode+decode of a (B, d) batch, returning (x̂ (B, d), feature activations (B, n))."""

    step: Callable[[Tensor], Any]
    reconstruct: Callable[[Tensor], tuple[Tensor, Tensor]]


# --- the trainers -----------------------------------------------------------------------------


def ours(job: Job, d: int, arch: str, fast: bool = True) -> Trainer:
    from monosemantic.sae import TopKSAE
    from monosemantic.train import make_states, train_step

    TopKSAE.fast = fast  # False: the plain autograd reference of the TopK step

    cfg = TrainConfig(
        arch=arch,
        sizes=[job.n_features],
        **for_arch(TrainConfig, arch, l1_coeff=job.l1_coeff, k=job.k),
        lr=job.lr,
        batch_size=job.batch_size,
        l1_warmup=WARMUP,
        lr_decay=DECAY,
        dead_window=job.dead_window,
        seed=job.seed,
        device="cpu",
    )
    # make_states only names the output folder; nothing is written there
    (st,) = make_states(cfg, d, Path(tempfile.gettempdir()), "cpu")

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        out = st.sae(x)
        return out.recon, out.feats

    def step(x: Tensor) -> None:
        if st.step == 0 and cfg.b_dec_init == "mean":
            # what `monosemantic train` does before its first step (train.train): without it our
            # dictionaries started with b_dec = 0 here, and trailed sparsify's (whose b_dec this
            # script sets to the first batch's mean) by 0.26 in variance explained after 5k tokens
            st.sae.center_on(x.mean(0))
        train_step(st, x, cfg, job.n_steps)

    return Trainer(step, reconstruct)


def saelens(job: Job, d: int, arch: str, sparse: bool = False) -> Trainer:
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(job.seed)
    sae: Any
    if arch == "standard":
        # apply_b_dec_to_input=False is the Anthropic April 2024 recipe (SAELens defaults to True)
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(
                d_in=d,
                d_sae=job.n_features,
                l1_coefficient=job.l1_coeff,
                l1_warm_up_steps=round(WARMUP * job.n_steps),
                apply_b_dec_to_input=False,
                decoder_init_norm=0.1,
            )
        )
    else:
        # The sparse-COO path needs rescale_acts_by_decoder_norm=False on CPU: with the default
        # True, backward fails (torch 2.13: no aten::view for SparseCPU).
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(
                d_in=d,
                d_sae=job.n_features,
                k=job.k,
                use_sparse_activations=sparse,
                rescale_acts_by_decoder_norm=not sparse,
            )
        )
    cfg = SAETrainerConfig(
        total_training_samples=job.n_steps * job.batch_size,
        train_batch_size_samples=job.batch_size,
        lr=job.lr,
        lr_end=job.lr,
        lr_scheduler_name="constant",
        lr_decay_steps=round(DECAY * job.n_steps),
        device="cpu",
        dead_feature_window=max(1, job.dead_window // job.batch_size),  # counted in steps
        feature_sampling_window=job.n_steps + 1,  # its window statistics only feed wandb
        logger=LoggingConfig(log_to_wandb=False),
    )
    # SAETrainer.fit() pulls from the provider; we call its public step() seam ourselves instead,
    # so that only the step is timed (fit() adds progress-bar and logging bookkeeping).
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x: Tensor) -> None:
        trainer.step(x)
        trainer.n_training_steps += 1

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        f = sae.encode(x)
        recon = sae.decode(f)
        return recon, f.to_dense() if f.is_sparse else f

    return Trainer(step, reconstruct)


def sparsify(job: Job, d: int, signum: bool = False, auxk_alpha: float = 1 / 32) -> Trainer:
    """sparsify's Trainer needs a transformers model and does its step inside a forward hook; this
    repeats that hook's work on our batches: b_dec = mean of the first batch, unit-norm decoder
    before each forward, FVU + α·AuxK loss, parallel gradient removed, optimizer step."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(job.seed)
    sae = SparseCoder(d, SparseCoderConfig(num_latents=job.n_features, k=job.k), dtype=torch.float32)
    opt: Any
    if signum:
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        lr = 5e-3 / (job.n_features / 2**14) ** 0.5  # sparsify's default for signum
        opt = ScheduleFreeWrapper(SignSGD([{"params": sae.parameters(), "lr": lr}]), momentum=0.95)
        opt.train()
    else:
        opt = torch.optim.Adam(sae.parameters(), lr=job.lr)
    since_fired = torch.zeros(job.n_features, dtype=torch.long)
    state = {"step": 0, "evaluating": False}

    def step(x: Tensor) -> None:
        if state["step"] == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        dead = since_fired > job.dead_window if auxk_alpha > 0 else None
        out = sae(x, dead_mask=dead)
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        if not signum:
            for group in opt.param_groups:
                group["lr"] = lr_at(state["step"], job.n_steps, job.lr, DECAY)
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[out.latent_indices.flatten()] = 0
        state["step"] += 1

    def reconstruct(x: Tensor) -> tuple[Tensor, Tensor]:
        if signum and not state["evaluating"]:
            opt.eval()  # schedule-free: evaluate the averaged weights
            state["evaluating"] = True
        top_acts, top_indices, _ = sae.encode(x)
        feats = x.new_zeros(len(x), job.n_features).scatter_(-1, top_indices, top_acts)
        return sae.decode(top_acts, top_indices), feats

    return Trainer(step, reconstruct)


# Imported before the RSS baseline is taken, so that the import's memory is not counted as training's.
MODULES = {
    "ours": ("monosemantic.config", "monosemantic.train"),
    "saelens": (
        "sae_lens.config",
        "sae_lens.saes.standard_sae",
        "sae_lens.saes.topk_sae",
        "sae_lens.training.sae_trainer",
    ),
    "sparsify": ("sparsify", "sparsify.sign_sgd", "schedulefree"),
}

BUILDERS: dict[str, Callable[[Job, int], Trainer]] = {
    "ours-relu": lambda job, d: ours(job, d, "relu"),
    "ours-topk": lambda job, d: ours(job, d, "topk"),
    "ours-topk-plain": lambda job, d: ours(job, d, "topk", fast=False),
    "saelens-standard": lambda job, d: saelens(job, d, "standard"),
    "saelens-topk": lambda job, d: saelens(job, d, "topk"),
    "saelens-topk-sparse": lambda job, d: saelens(job, d, "topk", sparse=True),
    "sparsify-topk": lambda job, d: sparsify(job, d),
    "sparsify-topk-signum": lambda job, d: sparsify(job, d, signum=True),
}


# --- measuring one job (in its own process) ---------------------------------------------------


def _proc_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def evaluate(trainer: Trainer, xs: Tensor, n_features: int, chunk: int = 4096) -> dict[str, float]:
    """Held-out metrics over xs (N, d), normalised activations."""
    mean = xs.mean(0)
    sse = total = l0 = 0.0
    fired = torch.zeros(n_features, dtype=torch.bool)
    for i in range(0, len(xs), chunk):
        x = xs[i : i + chunk]
        recon, active = trainer.reconstruct(x)
        sse += (x - recon).pow(2).sum().item()
        total += (x - mean).pow(2).sum().item()
        l0 += (active != 0).sum().item()
        fired |= (active != 0).any(0)
    return {
        "mse": sse / len(xs),
        "variance_explained": 1 - sse / total,
        "l0": l0 / len(xs),
        "silent_eval_pct": 100 * (1 - fired.float().mean().item()),
    }


def _warm_up(job: Job, d: int, x: Tensor) -> None:
    """Two steps of the same trainer at a toy size. Torch and the libraries load parts of
    themselves lazily (the first Adam step alone adds ~75 MiB of RSS; SAELens's imports happen to
    trigger some of that), so without this the RSS baseline and the first step's time would carry
    one-off costs that differ between libraries."""
    toy = BUILDERS[job.trainer](replace(job, n_features=max(64, 2 * job.k), tokens=2 * len(x)), d)
    for _ in range(2):
        toy.step(x)
    toy.reconstruct(x[:8])


def run_job(job: Job) -> dict[str, Any]:
    torch.set_num_threads(job.threads)
    store = ActivationStore(Path(job.run_dir))
    d = store.d_model
    batches_iter = store.batches(job.batch_size, job.seed, job.buffer_shards)
    batches = [next(batches_iter) for _ in range(job.n_steps)]
    del batches_iter  # frees the shuffle buffer
    xs = torch.cat(list(store.iter_split("eval"))) * store.scale
    for module in MODULES[job.trainer.split("-")[0]]:
        importlib.import_module(module)
    _warm_up(job, d, batches[0][:64])
    gc.collect()

    exact_peak = _reset_peak_rss()
    rss_before = _proc_kib("VmRSS")
    walls, cpus, peak = [], [], 0
    for _ in range(job.repeats):  # each from a fresh dictionary; the last one is evaluated
        gc.collect()
        trainer = BUILDERS[job.trainer](job, d)
        seconds = cpu_seconds = 0.0
        for x in batches:
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.step(x)
            seconds += time.perf_counter() - t0
            cpu_seconds += time.process_time() - c0
        walls.append(seconds)
        cpus.append(cpu_seconds)
        peak = max(peak, _proc_kib("VmHWM"))
    seconds, cpu_seconds = statistics.median(walls), statistics.median(cpus)
    metrics = evaluate(trainer, xs, job.n_features)
    n_tokens = job.n_steps * job.batch_size
    return {
        **asdict(job),
        "n_steps": job.n_steps,
        "n_train_tokens": n_tokens,
        "n_eval_tokens": len(xs),
        "train_seconds": seconds,
        "train_seconds_each": walls,
        "tokens_per_s_each": [n_tokens / w for w in walls],
        "tokens_per_s": n_tokens / seconds,
        "ms_per_step": 1000 * seconds / job.n_steps,
        # CPU time of all threads: less sensitive than wall time to other processes on the machine
        "cpu_ms_per_step": 1000 * cpu_seconds / job.n_steps,
        "peak_rss_mib": peak / 1024,
        "train_rss_mib": (peak - rss_before) / 1024,
        "peak_rss_exact": exact_peak,
        **metrics,
    }


# --- orchestration ----------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(threads: int) -> dict[str, Any]:
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    return {
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("monosemantic", "torch", "sae-lens", "eai-sparsify", "transformer-lens", "numpy")
        },
        "cpu": cpu.group(1) if cpu else platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
    }


def run_in_subprocess(job: Job) -> dict[str, Any]:
    """Run one job in a fresh interpreter; its result comes back through a temporary JSON file."""
    out = Path(job.out)
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(asdict(job))],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{job.trainer} n={job.n_features} failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return result


COLUMNS = (
    ("trainer", "trainer", "{}"),
    ("features", "n_features", "{:,}"),
    ("tokens/s", "tokens_per_s", "{:,.0f}"),
    ("ms/step", "ms_per_step", "{:.0f}"),
    ("CPU ms/step", "cpu_ms_per_step", "{:.0f}"),
    ("peak RSS MiB", "peak_rss_mib", "{:,.0f}"),
    ("train ΔRSS MiB", "train_rss_mib", "{:,.0f}"),
    ("eval MSE", "mse", "{:.1f}"),
    ("var. expl.", "variance_explained", "{:.3f}"),
    ("L0", "l0", "{:.1f}"),
    ("silent on eval %", "silent_eval_pct", "{:.1f}"),
)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    align = "| --- | " + " | ".join("---:" for _ in COLUMNS[1:]) + " |"
    body = ["| " + " | ".join(fmt.format(r[key]) for _, key, fmt in COLUMNS) + " |" for r in rows]
    return "\n".join([head, align, *body])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/demo", help="monosemantic run with a store")
    p.add_argument("--sizes", default="2048,16384", help="dictionary sizes, comma-separated")
    p.add_argument("--tokens", type=int, default=50_000, help="training tokens per dictionary")
    p.add_argument("--batch-size", type=int, default=512, help="activations per step")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam LR, all trainers (decays in the last 20%%)")
    p.add_argument("--l1-coeff", type=float, default=1.0, help="λ of the ReLU/standard dictionaries")
    p.add_argument("--k", type=int, default=32, help="active features per token of the TopK dictionaries")
    p.add_argument("--seed", type=int, default=0, help="batch order and initialisation seed")
    p.add_argument("--buffer-shards", type=int, default=16, help="store shards shuffled together")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    p.add_argument(
        "--dead-window",
        type=int,
        default=0,
        help="tokens without firing before AuxK treats a feature as dead; 0 = 5%% of the run (Gao et al.)",
    )
    p.add_argument(
        "--trainers",
        default=",".join(DEFAULT_TRAINERS),
        help=f"comma-separated, from {', '.join(DEFAULT_TRAINERS + EXTRA_TRAINERS)}",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="trainings per (trainer, size); the timings are medians"
    )
    p.add_argument("--out", default=str(HERE / "results"), help="folder for compare-<date>.json/.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        job = Job(**json.loads(args.worker))
        write_text(Path(job.out), json.dumps(run_job(job)))
        return
    trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    unknown = sorted(set(trainers) - set(BUILDERS))
    if unknown:
        sys.exit(f"unknown trainer(s) {', '.join(unknown)}: choose from {', '.join(BUILDERS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ActivationStore(Path(args.run_dir))  # fails early, with a clear message, on a bad run dir
    sizes = [int(s) for s in args.sizes.split(",")]
    n_steps = max(1, args.tokens // args.batch_size)
    window = dead_window(TrainConfig(batch_size=args.batch_size, dead_window=args.dead_window), n_steps)
    load_before = os.getloadavg()
    started, rows = time.perf_counter(), []
    for n in sizes:
        for name in trainers:
            job = Job(
                trainer=name,
                n_features=n,
                run_dir=str(args.run_dir),
                tokens=args.tokens,
                batch_size=args.batch_size,
                lr=args.lr,
                l1_coeff=args.l1_coeff,
                k=args.k,
                seed=args.seed,
                buffer_shards=args.buffer_shards,
                threads=args.threads,
                dead_window=window,
                out=str(out_dir / f"{name}-{n}.tmp"),
                repeats=args.repeats,
            )
            r = run_in_subprocess(job)
            rows.append(r)
            print(
                f"[{time.perf_counter() - started:5.0f} s] {name:22s} n={n:<6d} "
                f"{r['tokens_per_s']:7,.0f} tok/s  VE {r['variance_explained']:.3f}  L0 {r['l0']:.1f}",
                flush=True,
            )
    env = environment(args.threads)
    date = dt.date.today().isoformat()
    command = "python bench/compare_trainers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = {
        "date": date,
        "command": command.strip(),
        "store": {
            "run_dir": str(args.run_dir),
            "d_model": store.d_model,
            "model": store.manifest.get("model"),
            "layer": store.manifest.get("layer"),
            "train_tokens": store.n_tokens("train"),
            "eval_tokens": store.n_tokens("eval"),
        },
        "environment": env,
        "total_seconds": time.perf_counter() - started,
        # other processes on the machine skew every timing: the 1/5/15-min load averages
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "results": [{k: v for k, v in r.items() if k not in ("out", "run_dir")} for r in rows],
    }
    table = markdown_table(rows)
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v)
    md = (
        f"# SAE trainer comparison, {date}\n\n`{report['command']}`\n\n"
        f"{args.tokens:,} training tokens per dictionary, batch {args.batch_size}, "
        f"{store.n_tokens('eval'):,} held-out tokens; {env['cpu']}, {env['cpu_count']} cores, "
        f"{args.threads} torch threads.\n\n{versions}\n\n{table}\n"
    )
    write_text(out_dir / f"compare-{date}.json", json.dumps(report, indent=2) + "\n")
    write_text(out_dir / f"compare-{date}.md", md)
    print()
    print(table)
    print(f"\nwrote {out_dir / f'compare-{date}.json'} and .md ({report['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
