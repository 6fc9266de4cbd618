"""Optional experiment tracking: the scalars that go into ``log.jsonl`` (training) and each scaling
point's result, also sent to TensorBoard event files and/or a Weights & Biases run.

Both backends are optional extras (``pip install 'monosemantic[tensorboard]'`` / ``[wandb]``),
imported only when their flag is given. W&B honours its own environment (``WANDB_MODE=offline``
writes the run under ``RUN/wandb/`` for a later ``wandb sync``; ``WANDB_API_KEY``, ...).
"""

from __future__ import annotations

import math
from numbers import Real
from pathlib import Path
from typing import Any

from monosemantic.config import TrackingConfig
from monosemantic.errors import UserError


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a log row (not bools, lists or nested dicts)."""
    return {
        k: float(v)
        for k, v in row.items()
        if isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))
    }


class Tracker:
    """The trackers ``cfg`` asks for, for one command on one run directory. ``log(group, row, step)``
    sends a row's scalars: to TensorBoard as ``RUN/tensorboard/<group>/`` (one TensorBoard "run"
    per dictionary, so that sizes overlay in one plot per metric), to W&B as ``<group>/<key>`` in one
    W&B run per command. A Tracker with nothing enabled does nothing."""

    def __init__(self, cfg: TrackingConfig, run_dir: Path, job: str, config: dict[str, Any]) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.writers: dict[str, Any] = {}
        self.wandb_run: Any = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise UserError(
                    "--tensorboard needs TensorBoard: pip install tensorboard (monosemantic's "
                    "'tensorboard' extra)"
                ) from e
            self._summary_writer = SummaryWriter
        if cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise UserError(
                    "--wandb needs Weights & Biases: pip install wandb (monosemantic's 'wandb' extra)"
                ) from e
            run_dir.mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(
                project=cfg.wandb,
                name=f"{run_dir.resolve().name}-{job}",
                dir=str(run_dir),
                config={"job": job, "run_dir": str(run_dir), **config},
                reinit="create_new",
            )

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.tensorboard or self.cfg.wandb)

    def log(self, group: str, row: dict[str, Any], step: int) -> None:
        values = scalars(row)
        if self.cfg.tensorboard:
            if group not in self.writers:
                self.writers[group] = self._summary_writer(log_dir=str(self.run_dir / "tensorboard" / group))
            for k, v in values.items():
                self.writers[group].add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log({f"{group}/{k}": v for k, v in values.items()}, step=step)

    def close(self) -> None:
        for w in self.writers.values():
            w.close()
        self.writers.clear()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
