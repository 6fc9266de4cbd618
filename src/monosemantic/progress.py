"""Progress bars with rate and ETA, and the throughput/memory figures every stage reports."""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field

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


def progress_bar(unit: str = "tok") -> Progress:
    """A rich progress bar showing done/total, rate in ``unit``/s, elapsed time and ETA."""
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
    )


@dataclass
class Throughput:
    """Counts items over wall time; ``summary`` is the one-line report a stage ends with."""

    unit: str = "tokens"
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
        return {
            "tokens_per_s": round(self.rate, 1),
            "seconds": round(self.seconds, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }

    def summary(self, stage: str) -> str:
        return (
            f"{stage}: {self.count:,} {self.unit} in {self.seconds:.1f} s, "
            f"{self.rate:,.0f} {self.unit}/s, peak RSS {peak_rss_mb():,.0f} MiB"
        )
