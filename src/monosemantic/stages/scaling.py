"""The scaling-law sweep (``scaling.py`` holds the method) and the recommendations drawn from it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monosemantic.config import ScalingConfig, TrackingConfig, record_stage, resolve_device
from monosemantic.errors import UserError
from monosemantic.runlock import writes_run


@writes_run("out", "scaling")
def run_scaling(
    out: Path,
    cfg: ScalingConfig,
    force: bool,
    on_point: Callable[[dict[str, Any], bool], None] | None = None,
    tracking: TrackingConfig | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) the sweep on the run's store and fit the laws into scaling/fits.json (rank 0
    also rewrites the report). ``on_point(row, trained)`` is called on rank 0 for every point as it
    is done (``trained`` False when it was finished earlier or by another rank). Returns the fits on
    rank 0, None on the other ranks. Rank 0 sends each point's result to the trackers ``tracking``
    enables (step = the point's index in the order the sweep reports them)."""
    from monosemantic.activations import ActivationStore
    from monosemantic.distributed import init_from_env, local_device
    from monosemantic.fsio import write_json
    from monosemantic.report import build_report
    from monosemantic.scaling import Sweep, fit_sweep, load_results

    device = local_device(resolve_device(cfg.device))
    dist = init_from_env(device)
    main = dist is None or dist.is_main
    store = ActivationStore(out)
    if main:
        if force:
            shutil.rmtree(out / "scaling", ignore_errors=True)
        record_stage(out, "scaling", cfg, force=force)
    if dist is not None:
        dist.barrier()

    from dataclasses import asdict

    from monosemantic.tracking import Tracker

    tracking = tracking if main and tracking is not None else TrackingConfig()  # rank 0 tracks
    tracker = Tracker(tracking, out, "scaling", asdict(cfg))
    reported = [0]

    def report_point(row: dict[str, Any], trained: bool) -> None:
        if main and on_point is not None:
            on_point(row, trained)
        if main:
            tracker.log("scaling", row, reported[0])
            reported[0] += 1

    try:
        Sweep(cfg, out, store, device, dist, report_point).run()
    finally:
        tracker.close()
    if dist is not None:
        dist.close()
    if not main:
        return None
    fits = fit_sweep(load_results(out), seed=cfg.seed)
    write_json(out / "scaling" / "fits.json", fits)
    build_report(out)
    return fits


def run_recommend(run: Path, flops: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the run's fitted laws predict for a budget of ``flops`` training FLOPs: (recommendation,
    fits); see ``scaling.recommend``.

    Raises:
        UserError: the run has no fits, or ``flops`` is not positive.
    """
    from monosemantic.fsio import read_json
    from monosemantic.scaling import recommend

    path = run / "scaling" / "fits.json"
    if not path.is_file():
        raise UserError(f"{run} has no fitted scaling laws: run `monosemantic scaling {run}` first")
    if flops <= 0:
        raise UserError("--recommend needs a positive compute budget: --flops 1e15")
    fits = read_json(path)
    return recommend(fits, flops), fits
