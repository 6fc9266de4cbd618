"""The CI part of the kill -9 campaign (tests/chaos.py; `make chaos` runs 20 kill points per
stage): two seeded kill points per stage, one for the 2-rank torchrun training; every stage reruns to
artifacts equal to an uninterrupted run's."""

from __future__ import annotations

import pytest

from tests.chaos import campaign


@pytest.mark.slow
def test_kill_9_at_random_points_loses_nothing() -> None:
    tallies = campaign(kills=2, seed=1, torchrun_kills=1)
    assert len(tallies) == 11  # harvest, 5 architectures, torchrun, evaluate, analyze, explain, scaling
    failures = [f"{name}: {f}" for name, t in tallies.items() for f in t.failures]
    assert failures == []
    assert all(t.survived == t.tried for t in tallies.values())
