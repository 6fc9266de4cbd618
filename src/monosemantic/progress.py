"""Progress bars with rate and ETA, and the throughput/memory figures every stage reports."""

from __future__ import annotations

import resource
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"? {self.unit}/s", style="cyan")


LOG_WIDTH = 160
"""Columns of a bar written to a file or pipe: it is printed once, when it stops, and rich's
80-column default cut its counts and rate to ``1999…``."""


def progress_bar(unit: str = "tok", disable: bool = False) -> Progress:
    """A rich progress bar showing done/total, rate in ``unit``/s, elapsed time and ETA (on a
    terminal it redraws in place; elsewhere it prints its last state, ``LOG_WIDTH`` wide)."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, LOG_WIDTH)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
        disable=disable,
        console=console,
    )


@dataclass
class Throughput:
    """Counts items over wall time; ``summary`` is the one-line report a stage ends with."""

    unit: str = "tokens"
    flops_per_item: float = 0.0  # estimated FLOPs per item, for a FLOP/s figure; 0 = not reported
    count: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, n: int) -> None:
        self.count += n

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.count / max(self.seconds, 1e-9)

    def as_dict(self) -> dict[str, float]:
        out = {"tokens_per_s": round(self.rate, 1), "seconds": round(self.seconds, 2)}
        if self.flops_per_item:
            out["gflop_per_s"] = round(self.rate * self.flops_per_item / 1e9, 2)
        return {**out, "peak_rss_mb": round(peak_rss_mb(), 1)}

    def summary(self, stage: str) -> str:
        flops = f"~{self.rate * self.flops_per_item / 1e9:,.1f} GFLOP/s, " if self.flops_per_item else ""
        return (
            f"{stage}: {self.count:,} {self.unit} in {self.seconds:.1f} s, "
            f"{self.rate:,.0f} {self.unit}/s, {flops}peak RSS {peak_rss_mb():,.0f} MiB"
        )


def status(message: str) -> AbstractContextManager[object]:
    """A spinner with ``message`` on stderr while a slow step without a known length runs."""
    return Console(stderr=True).status(message)
