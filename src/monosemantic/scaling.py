"""Scaling laws for dictionaries: an IsoFLOP sweep over size × steps × learning rate at fixed λ (and
k), fitted power laws for the loss-optimal size N_opt(C), steps S_opt(C), learning rate LR_opt(C)
and the loss frontier L(C), and a recommendation for a compute budget.

Compute C is counted in training FLOPs (``train.train_flops_per_token`` × tokens), the x-axis
everywhere. A sweep has ``levels`` compute levels spread geometrically over ``decades``. Each level
is an IsoFLOP profile (Chinchilla's approach 2): dictionaries of several sizes, each trained for
the tokens the level's budget buys (T = C / flops_per_token(n)), so larger dictionaries see fewer
tokens. Levels run from the smallest budget up, and each adapts to the ones before:

1. sizes: ``sizes_per_level`` sizes, a factor 2 apart, centred on the size the previous levels
   predict (N ∝ C^½ before two levels are measured), trained at the level's base learning rate;
   while the best size lies on the edge of the profile, the profile grows by one size outwards
   (at most ``max_extend`` times);
2. learning rate: at the best size, the base rate × ``lr_factor``^±1 (again grown outwards while
   the best rate is on the edge). The next level's base rate is this level's best.

Every point trains into ``scaling/points/<name>/`` with the trainer's checkpoints and writes
``result.json`` when done, so a killed sweep continues where it stopped and skips finished points;
under torchrun the points of each phase are dealt out to the ranks. The loss is measured on the
held-out activations: MSE + λ · sparsity term (relu: decoder-norm-weighted L1, jumprelu: L0), MSE
alone for TopK variants, on the training scale.

Fits (``fit_sweep``): per level, a parabola in log n through the profile (in log lr for the rate),
whose vertex is the optimum when it lies inside the measured range (the grid's best point
otherwise); then least squares in log-log space across levels, y = A · C^a, with R² and a 95%
bootstrap interval (points resampled within each level).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monosemantic.activations import ActivationStore
from monosemantic.config import ScalingConfig, TrainConfig, for_arch
from monosemantic.dictionary import sae_name
from monosemantic.distributed import DistContext
from monosemantic.errors import UserError
from monosemantic.fsio import read_json, write_json
from monosemantic.sae import LossContext
from monosemantic.train import train, train_flops_per_token

log = logging.getLogger(__name__)

FITS = "fits.json"


@dataclass(frozen=True)
class Point:
    """One training of the sweep."""

    level: int
    flops: float
    n_features: int
    lr: float
    phase: str  # "size" or "lr"

    @property
    def name(self) -> str:
        return f"c{self.level}-n{self.n_features}-lr{self.lr:.3g}"


def flops_per_token(cfg: ScalingConfig, d_model: int, n: int) -> int:
    return train_flops_per_token(d_model, n, cfg.arch, cfg.k)


def level_flops(cfg: ScalingConfig, d_model: int) -> list[float]:
    """The compute of each level, smallest first."""
    c0 = cfg.min_flops or 100 * d_model * flops_per_token(cfg, d_model, d_model)
    c0 *= cfg.budget
    return [c0 * 10 ** (cfg.decades * i / (cfg.levels - 1)) for i in range(cfg.levels)]


def _round_size(n: float) -> int:
    """A dictionary size: a multiple of 64 from 1,024 on, of 8 below (at least 8)."""
    step = 64 if n >= 1024 else 8
    return max(8, int(round(n / step)) * step)


def profile_sizes(centre: float, count: int) -> list[int]:
    """``count`` sizes a factor 2 apart around ``centre``."""
    return sorted({_round_size(centre * 2 ** (i - (count - 1) / 2)) for i in range(count)})


# -- fitting ------------------------------------------------------------------------------------


def parabola_min(x: np.ndarray, y: np.ndarray) -> tuple[float, float, bool]:
    """The minimum of y over x (log-space coordinates): the vertex of a least-squares parabola
    through the three points around the grid's best, when it curves upwards and its vertex lies
    inside their range; else the best point. Returns (x_min, y_min, fitted)."""
    x, inverse = np.unique(x, return_inverse=True)  # sorted; repeated points (a bootstrap) averaged
    y = np.bincount(inverse, weights=y) / np.bincount(inverse)
    best = int(np.argmin(y))
    if len(x) < 3 or best in (0, len(x) - 1):
        return float(x[best]), float(y[best]), False
    xs, ys = x[best - 1 : best + 2], y[best - 1 : best + 2]
    a, b, c = np.polyfit(xs - xs[1], ys, 2)  # centred: three points determine it exactly
    if a <= 0:
        return float(x[best]), float(y[best]), False
    vertex = xs[1] - b / (2 * a)
    if not xs[0] <= vertex <= xs[-1]:
        return float(x[best]), float(y[best]), False
    return float(vertex), float(c - b * b / (4 * a)), True


@dataclass
class PowerLaw:
    """y = coefficient · C^exponent, fitted in log10 space."""

    exponent: float
    coefficient: float
    r2: float
    ci: tuple[float, float] = (math.nan, math.nan)  # 95% bootstrap interval of the exponent

    def __call__(self, flops: Any) -> Any:
        """The law at ``flops`` (a number or an array)."""
        return self.coefficient * flops**self.exponent

    @classmethod
    def fit(cls, c: np.ndarray, y: np.ndarray) -> PowerLaw:
        lc, ly = np.log10(c), np.log10(y)
        slope, intercept = np.polyfit(lc, ly, 1)
        resid = ly - (slope * lc + intercept)
        total = ((ly - ly.mean()) ** 2).sum()
        r2 = 1.0 - (resid**2).sum() / total if total > 0 else 1.0
        return cls(float(slope), float(10**intercept), float(r2))


def level_optima(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The optima of one level's points: n_opt and the loss at it (from the size profile at the
    base rate), lr_opt (from the rate scan at the best size), and the steps n_opt implies."""
    base = [r for r in rows if r["phase"] == "size"]
    if len(base) < 2:
        raise ValueError("a level needs at least two sizes")
    log_n, loss_n, fitted_n = parabola_min(
        np.log10([r["n_features"] for r in base]), np.array([r["loss"] for r in base])
    )
    best = min(base, key=lambda r: r["loss"])
    scan = [r for r in rows if r["n_features"] == best["n_features"]]
    log_lr, _, fitted_lr = parabola_min(
        np.log10([r["lr"] for r in scan]), np.array([r["loss"] for r in scan])
    )
    n_opt = 10**log_n
    per_token = best["flops_per_token"] * n_opt / best["n_features"]  # ∝ n for dense and TopK encoders
    return {
        "flops": float(best["flops"]),
        "n_opt": float(n_opt),
        "loss_opt": float(min(loss_n, min(r["loss"] for r in rows))),
        "lr_opt": float(10**log_lr),
        "steps_opt": float(best["flops"] / per_token / best["batch_size"]),
        "n_fitted": fitted_n,
        "lr_fitted": fitted_lr,
    }


LAWS = ("n_opt", "steps_opt", "lr_opt", "loss_opt")


def _laws(optima: list[dict[str, float]]) -> dict[str, PowerLaw]:
    c = np.array([o["flops"] for o in optima])
    return {key: PowerLaw.fit(c, np.array([o[key] for o in optima])) for key in LAWS}


def fit_sweep(rows: list[dict[str, Any]], n_boot: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per-level optima and the power laws through them, with bootstrap intervals of the exponents."""
    by_level: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_level.setdefault(int(r["level"]), []).append(r)
    levels = [by_level[k] for k in sorted(by_level) if len({r["n_features"] for r in by_level[k]}) >= 2]
    if len(levels) < 2:
        raise UserError(
            "the sweep has fewer than two finished compute levels: run `monosemantic scaling` longer"
        )
    optima = [level_optima(lv) for lv in levels]
    laws = _laws(optima)
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in LAWS}
    for _ in range(n_boot):
        try:
            resampled = [[lv[i] for i in rng.integers(0, len(lv), len(lv))] for lv in levels]
            boot = _laws([level_optima(lv) for lv in resampled])
        except (ValueError, np.linalg.LinAlgError):  # a resample with a single size: skip it
            continue
        for k in LAWS:
            samples[k].append(boot[k].exponent)
    for k in LAWS:
        if len(samples[k]) >= 10:
            lo, hi = np.percentile(samples[k], [2.5, 97.5])
            laws[k].ci = (float(lo), float(hi))
    return {
        "levels": optima,
        "laws": {k: dataclasses.asdict(v) for k, v in laws.items()},
        "flops_range": [optima[0]["flops"], optima[-1]["flops"]],
        "n_points": len(rows),
        "batch_size": int(rows[0]["batch_size"]),
        "n_bootstrap": len(samples["n_opt"]),
    }


def load_results(run_dir: Path) -> list[dict[str, Any]]:
    """The finished points of the run's sweep, in compute order."""
    rows = [read_json(p) for p in sorted((run_dir / "scaling" / "points").glob("*/result.json"))]
    return sorted(rows, key=lambda r: (r["level"], r["n_features"], r["lr"]))


def load_law(d: dict[str, Any]) -> PowerLaw:
    lo, hi = d["ci"]
    return PowerLaw(d["exponent"], d["coefficient"], d["r2"], (lo, hi))


def recommend(fits: dict[str, Any], flops: float) -> dict[str, Any]:
    """What the fitted laws predict for a budget of ``flops``, with how far that extrapolates."""
    laws = {k: load_law(v) for k, v in fits["laws"].items()}
    lo, hi = fits["flops_range"]
    factor = flops / hi if flops > hi else lo / flops if flops < lo else 1.0
    return {
        "flops": flops,
        "n_features": laws["n_opt"](flops),
        "steps": laws["steps_opt"](flops),
        "lr": laws["lr_opt"](flops),
        "loss": laws["loss_opt"](flops),
        "extrapolation": factor,
    }


# -- the sweep ----------------------------------------------------------------------------------


@dataclass
class Sweep:
    """Runs the points of a sweep (skipping finished ones) and collects their results."""

    cfg: ScalingConfig
    run_dir: Path
    store: ActivationStore
    device: str
    dist: DistContext | None = None
    on_point: Callable[[dict[str, Any], bool], None] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.run_dir / "scaling"

    def run(self) -> list[dict[str, Any]]:
        d = self.store.d_model
        n_train = self.store.n_tokens("train")
        if n_train < self.cfg.batch_size:
            raise UserError(f"the store has {n_train} training activations: harvest more (--tokens)")
        self._eval = torch.cat(list(self.store.iter_split("eval")))[: self.cfg.eval_tokens] * self.store.scale
        if len(self._eval) == 0:
            raise UserError("the store has no held-out activations: rerun harvest with --eval-tokens > 0")
        lr, centre = self.cfg.lr, float(d)
        for level, flops in enumerate(level_flops(self.cfg, d)):
            done = self._level_rows(level)
            if len(done) >= 2:  # predict this level's centre from the optima measured so far
                fits = _laws([level_optima(r) for r in done])
                centre = fits["n_opt"](flops)
            elif done:
                centre = level_optima(done[0])["n_opt"] * (flops / done[0][0]["flops"]) ** 0.5
            rows = self._profile(level, flops, profile_sizes(centre, self.cfg.sizes_per_level), lr)
            best = min(rows, key=lambda r: r["loss"])["n_features"]
            rows += self._lr_scan(level, flops, best, lr)
            lr = level_optima(rows)["lr_opt"]
        return self.rows

    def _level_rows(self, upto: int) -> list[list[dict[str, Any]]]:
        return [[r for r in self.rows if r["level"] == lv] for lv in range(upto)]

    def _profile(self, level: int, flops: float, sizes: list[int], lr: float) -> list[dict[str, Any]]:
        rows = self._run_points([Point(level, flops, n, lr, "size") for n in sizes])
        for _ in range(self.cfg.max_extend):
            ordered = sorted(rows, key=lambda r: r["n_features"])
            best = min(range(len(ordered)), key=lambda i: ordered[i]["loss"])
            if 0 < best < len(ordered) - 1:
                break
            edge = ordered[best]["n_features"]
            n = _round_size(edge / 2) if best == 0 else _round_size(edge * 2)
            if n == edge or self._too_short(flops, n):
                break
            rows += self._run_points([Point(level, flops, n, lr, "size")])
        return rows

    def _lr_scan(self, level: int, flops: float, n: int, lr: float) -> list[dict[str, Any]]:
        f = self.cfg.lr_factor
        rows = self._run_points([Point(level, flops, n, lr * f**s, "lr") for s in (-1, 1)])
        scanned = {lr: self._find(level, n, lr)}
        scanned |= {r["lr"]: r for r in rows}
        for _ in range(self.cfg.max_extend):
            rates = sorted(scanned)
            best = min(rates, key=lambda x: scanned[x]["loss"])
            if best not in (rates[0], rates[-1]):
                break
            new = best / f if best == rates[0] else best * f
            row = self._run_points([Point(level, flops, n, new, "lr")])[0]
            scanned[new] = row
            rows.append(row)
        return rows

    def _find(self, level: int, n: int, lr: float) -> dict[str, Any]:
        return next(r for r in self.rows if (r["level"], r["n_features"], r["lr"]) == (level, n, lr))

    def _too_short(self, flops: float, n: int) -> bool:
        """Fewer than 20 steps: too short to say anything about this size."""
        return flops / flops_per_token(self.cfg, self.store.d_model, n) < 20 * self.cfg.batch_size

    def _run_points(self, points: list[Point]) -> list[dict[str, Any]]:
        """Train the points not yet finished (dealt out to the ranks under torchrun) and return the
        results of all of them, in order. Each is reported once: as soon as it is trained here,
        or when read back (finished earlier, or by another rank)."""
        rank, world = (self.dist.rank, self.dist.world) if self.dist else (0, 1)
        for i, p in enumerate(points):
            result = self.dir / "points" / p.name / "result.json"
            if i % world == rank and not result.is_file():
                self._train_point(p, result)
                self._collect(read_json(result), trained=True)
        if self.dist is not None:
            self.dist.barrier()
        return [self._collect(read_json(self.dir / "points" / p.name / "result.json")) for p in points]

    def _collect(self, row: dict[str, Any], trained: bool = False) -> dict[str, Any]:
        if all(r["name"] != row["name"] for r in self.rows):
            self.rows.append(row)
            if self.on_point is not None:
                self.on_point(row, trained)
        return row

    def _train_point(self, p: Point, result: Path) -> None:
        d, n_train = self.store.d_model, self.store.n_tokens("train")
        per_token = flops_per_token(self.cfg, d, p.n_features)
        tokens = p.flops / per_token
        tcfg = TrainConfig(
            arch=self.cfg.arch,
            sizes=[p.n_features],
            **for_arch(TrainConfig, self.cfg.arch, l1_coeff=self.cfg.l1_coeff, k=self.cfg.k),
            lr=p.lr,
            batch_size=self.cfg.batch_size,
            epochs=tokens / n_train,
            seed=self.cfg.seed,
            checkpoint_every=1000,
            log_every=50,
            device=self.device,
        )
        point_dir = self.dir / "points" / p.name
        start = time.perf_counter()
        states, meter = train(
            tcfg,
            self.store.batch_source(tcfg),
            run_dir=point_dir,
            d_model=d,
            n_train_tokens=n_train,
            scale=self.store.scale,
            meta={"model": self.store.manifest["model"], "layer": self.store.manifest["layer"]},
            device=self.device,
        )
        sae = states[0].sae
        with torch.no_grad():
            sae.eval()
            x = self._eval.to(self.device)
            total = 0.0
            for i in range(0, len(x), 4096):
                xb = x[i : i + 4096]
                lo = sae.loss(xb, sae(xb), LossContext(self.cfg.l1_coeff))
                total += lo.loss.item() * len(xb)
        steps = states[0].step
        write_json(
            result,
            {
                "name": p.name,
                "level": p.level,
                "phase": p.phase,
                "flops": p.flops,
                "n_features": p.n_features,
                "lr": p.lr,
                "batch_size": self.cfg.batch_size,
                "steps": steps,
                "tokens": steps * self.cfg.batch_size,
                "flops_per_token": per_token,
                "loss": total / len(x),
                "seconds": round(time.perf_counter() - start, 2),
                "train": meter.as_dict(),
            },
        )
        # the dictionary stays (saes/<name>/); its optimizer state is only needed to resume
        (point_dir / "saes" / sae_name(self.cfg.arch, p.n_features) / "state.pt").unlink(missing_ok=True)
