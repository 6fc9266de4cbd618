"""Range checks for numeric settings: one-line ``UserError`` messages that name the flag, so that the
config dataclasses and the CLI commands refuse a bad number before any model loads or file is written."""

from __future__ import annotations

import math

from monosemantic.errors import UserError

MAX_INT = 10**15
"""Upper bound of every count (tokens, steps, sizes ...): far beyond any real run, and small enough
that products of counts stay inside int64 and ``itertools.islice``."""

MAX_SEED = 2**32 - 1


def check_int(flag: str, value: int, lo: int, hi: int = MAX_INT, *, hint: str = "") -> None:
    """Refuse an integer outside [lo, hi]; ``hint`` says what the bounds mean."""
    if not lo <= value <= hi:
        bound = f"at least {lo}" if hi == MAX_INT else f"between {lo} and {hi}"
        raise UserError(f"{flag} must be {bound}{hint}, not {value}")


def check_float(
    flag: str,
    value: float,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> None:
    """Refuse NaN, ±inf, and a value outside the interval from ``lo`` to ``hi`` (open at a side
    when ``lo_open`` / ``hi_open``); ``None`` leaves that side unbounded."""
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and (value >= hi if hi_open else value > hi)
    if math.isfinite(value) and not too_low and not too_high:
        return
    parts = []
    if lo is not None:
        parts.append(f"{'above' if lo_open else 'at least'} {lo:g}")
    if hi is not None:
        parts.append(f"{'below' if hi_open else 'at most'} {hi:g}")
    bound = " and ".join(parts)
    raise UserError(f"{flag} must be a finite number{' ' + bound if bound else ''}{hint}, not {value}")


def check_seed(flag: str, value: int) -> None:
    check_int(flag, value, 0, MAX_SEED)
