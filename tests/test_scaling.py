"""Scaling laws: the fits on synthetic sweeps with known laws, and the sweep end to end on a tiny
store (resume, recommendation, report, torchrun)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monosemantic.scaling import PowerLaw, fit_sweep, parabola_min, profile_sizes, recommend
from tests.helpers import cli, run_cli, run_torchrun

A_N, A_LR = 0.45, -0.3  # the planted exponents of N_opt and LR_opt


def test_parabola_min_finds_the_vertex_and_falls_back_on_edges() -> None:
    x = np.array([0.0, 1.0, 2.0, 3.0])
    x_min, y_min, fitted = parabola_min(x, 2.0 * (x - 1.3) ** 2 + 5.0)
    assert fitted and x_min == pytest.approx(1.3) and y_min == pytest.approx(5.0)
    x_min, _, fitted = parabola_min(x, -x)  # falling to the edge: the best point, flagged
    assert not fitted and x_min == 3.0


def test_power_law_fit_recovers_an_exact_law() -> None:
    c = np.geomspace(1e10, 1e13, 5)
    law = PowerLaw.fit(c, 3.0 * c**0.4)
    assert law.exponent == pytest.approx(0.4) and law.coefficient == pytest.approx(3.0, rel=1e-6)
    assert law.r2 == pytest.approx(1.0) and law(1e11) == pytest.approx(3.0 * 1e11**0.4)


def synthetic_sweep(noise: float, seed: int = 0) -> list[dict[str, Any]]:
    """An IsoFLOP sweep whose loss is a bowl in (log n, log lr) around n_opt ∝ C^A_N and
    lr_opt ∝ C^A_LR, at the loss L_opt ∝ C^-0.2, with multiplicative noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for level, c in enumerate(np.geomspace(1e11, 1e13, 4)):
        n_opt, lr_opt, l_opt = 2e3 * (c / 1e11) ** A_N, 3e-3 * (c / 1e11) ** A_LR, 50 * (c / 1e11) ** -0.2

        def loss(
            n: float, lr: float, n_opt: float = n_opt, lr_opt: float = lr_opt, l_opt: float = l_opt
        ) -> float:
            bowl = 0.3 * math.log10(n / n_opt) ** 2 + 0.2 * math.log10(lr / lr_opt) ** 2
            return float(l_opt * (1 + bowl) * (1 + noise * rng.standard_normal()))

        sizes = profile_sizes(n_opt * 1.3, 5)
        rows += [_row(level, c, n, lr_opt * 1.5, "size", loss(n, lr_opt * 1.5)) for n in sizes]
        best = sizes[2]
        rows += [
            _row(level, c, best, lr_opt * 1.5 * f, "lr", loss(best, lr_opt * 1.5 * f)) for f in (1 / 3, 3)
        ]
    return rows


def _row(level: int, c: float, n: int, lr: float, phase: str, loss: float) -> dict[str, Any]:
    per_token = 12 * 64 * n
    return {
        "level": level,
        "flops": float(c),
        "n_features": n,
        "lr": lr,
        "phase": phase,
        "loss": loss,
        "batch_size": 128,
        "flops_per_token": per_token,
    }


def test_fit_sweep_recovers_planted_exponents() -> None:
    fits = fit_sweep(synthetic_sweep(noise=0.0))
    laws = fits["laws"]
    assert laws["n_opt"]["exponent"] == pytest.approx(A_N, abs=0.05)
    assert laws["lr_opt"]["exponent"] == pytest.approx(A_LR, abs=0.08)
    assert laws["loss_opt"]["exponent"] == pytest.approx(-0.2, abs=0.02)
    # with a fixed batch, steps = C / (12·d·n_opt·B): the exponent is 1 − a_N
    assert laws["steps_opt"]["exponent"] == pytest.approx(1 - laws["n_opt"]["exponent"], abs=1e-6)
    assert all(o["n_fitted"] for o in fits["levels"])


def test_bootstrap_interval_covers_the_planted_exponent_under_noise() -> None:
    fits = fit_sweep(synthetic_sweep(noise=0.01, seed=3), n_boot=200)
    lo, hi = fits["laws"]["n_opt"]["ci"]
    assert lo < A_N < hi and hi - lo < 0.5
    assert fits["n_bootstrap"] >= 100


def test_recommend_reports_the_extrapolation() -> None:
    fits = fit_sweep(synthetic_sweep(noise=0.0))
    inside = recommend(fits, 1e12)
    assert inside["extrapolation"] == 1.0
    assert inside["n_features"] == pytest.approx(2e3 * 10**A_N, rel=0.15)
    far = recommend(fits, 1e16)
    assert far["extrapolation"] == pytest.approx(1e3) and far["n_features"] > inside["n_features"]


SWEEP = ["--levels", "2", "--decades", "0.5", "--sizes-per-level", "3", "--min-flops", "3e7"]
SWEEP += ["--batch-size", "64", "--eval-tokens", "512", "--max-extend", "1"]


def _trained(err: str) -> int:
    return sum(1 for line in err.splitlines() if line.startswith("level ") and "finished earlier" not in line)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, harvested: Path) -> tuple[Path, int, str]:
    """The sweep run in this process, once for the tests that look at it: (run directory, exit
    code, stderr)."""
    out = tmp_path_factory.mktemp("swept") / "run"
    shutil.copytree(harvested, out)
    return (out, *run_cli("scaling", out, *SWEEP))


@pytest.mark.slow  # the sweep trains a dozen dictionaries
def test_scaling_cli_sweeps_fits_resumes_and_recommends(capsys, monkeypatch, swept, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(swept[0], run)
    code, err = swept[1:]
    assert code == 0, err
    fits = json.loads((run / "scaling" / "fits.json").read_text())
    results = sorted((run / "scaling" / "points").glob("*/result.json"))
    assert _trained(err) == len(results) == fits["n_points"] >= 2 * (3 + 2)
    levels = fits["levels"]
    assert len(levels) == 2 and levels[1]["flops"] == pytest.approx(levels[0]["flops"] * 10**0.5)
    for r in map(lambda p: json.loads(p.read_text()), results):
        assert r["tokens"] == pytest.approx(r["flops"] / r["flops_per_token"], abs=r["batch_size"])
        assert math.isfinite(r["loss"]) and r["loss"] > 0
    html = (run / "report" / "index.html").read_text()
    assert "Scaling laws" in html and (run / "report" / "scaling_optima.png").is_file()

    # rerun: nothing is trained again; a lost point is trained again, alone
    code, err = cli(capsys, monkeypatch, "scaling", run, *SWEEP)
    assert code == 0 and _trained(err) == 0
    shutil.rmtree(results[0].parent)
    code, err = cli(capsys, monkeypatch, "scaling", run, *SWEEP)
    assert code == 0 and _trained(err) == 1
    assert json.loads((run / "scaling" / "fits.json").read_text())["laws"] == fits["laws"]

    code, err = cli(capsys, monkeypatch, "scaling", run, "--recommend", "--flops", "1e12")
    assert code == 0 and "dictionary size" in err and "warning" in err and "outside the measured" in err
    code, err = cli(capsys, monkeypatch, "scaling", run, *SWEEP, "--lr", "1e-2")
    assert code == 2 and "--force" in err  # another configuration over a finished sweep


def test_scaling_refuses_bad_input(capsys, monkeypatch, run: Path, tmp_path: Path) -> None:
    code, err = cli(capsys, monkeypatch, "scaling", run, "--recommend", "--flops", "1e12")
    assert code == 2 and "run `monosemantic scaling" in err
    code, err = cli(capsys, monkeypatch, "scaling", tmp_path / "nothing", *SWEEP)
    assert code == 2 and "no activation store" in err
    code, err = cli(capsys, monkeypatch, "scaling", run, "--levels", "1")
    assert code == 2 and "--levels" in err


@pytest.mark.slow
def test_scaling_under_torchrun_deals_points_to_ranks(run: Path, swept) -> None:
    single = swept[0]
    assert swept[1] == 0
    proc = run_torchrun("scaling", str(run), *SWEEP)
    assert "level 1" in proc.stderr
    a = json.loads((single / "scaling" / "fits.json").read_text())
    b = json.loads((run / "scaling" / "fits.json").read_text())
    assert a["n_points"] == b["n_points"]
    for x, y in zip(a["levels"], b["levels"], strict=True):
        assert x["n_opt"] == pytest.approx(y["n_opt"], rel=1e-3) and x["lr_opt"] == pytest.approx(
            y["lr_opt"], rel=1e-3
        )
