"""The steps lintrace's trainer checkpoints at (``src/config/steps.rs``).

Step 0, the final step, ``round(base ** (i / k))`` for i = 0, 1, 2, ... while
it is at most the final step (base 10 with ``k = per_decade``, or base 2 with
``k = per_octave`` when that is > 0), and every ``every`` steps when
``every`` > 0; sorted, without duplicates. ``round`` is Rust's
``f64::round`` (halves away from zero), not Python's (halves to even).
"""

import math
from typing import List, Optional, Set

__all__ = ["log_spaced_steps", "is_log_spaced_step", "Schedule"]


def _round_half_away(x: float) -> int:
    f = math.floor(x)
    return int(f) + 1 if x - f >= 0.5 else int(f)


def _base_and_k(per_decade: float, per_octave: float):
    if per_octave > 0:
        return 2.0, float(per_octave)
    return 10.0, float(per_decade)


def _points_up_to(limit: int, per_decade: float, per_octave: float) -> List[int]:
    """The log-spaced points round(base^(i/k)) that are <= limit (with repeats)."""
    base, k = _base_and_k(per_decade, per_octave)
    out = []
    if not (k > 0 and math.isfinite(k)):
        return out
    i = 0
    while True:
        try:
            # `i as f64 / k` then `powf`: the same IEEE division and libm pow.
            x = math.pow(base, i / k)
        except OverflowError:
            break
        if not math.isfinite(x):
            break
        s = _round_half_away(x)
        if s > limit:
            break
        out.append(s)
        i += 1
    return out


def _check_total(total) -> int:
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"total must be a non-negative integer, got {total!r}")
    return total


def log_spaced_steps(total: int, per_decade: float = 8, per_octave: float = 0, every: int = 0) -> List[int]:
    """Sorted, deduplicated checkpoint steps in ``0..=total``, exactly as
    ``lintrace-train --steps TOTAL --ckpt-per-decade K`` (or
    ``--ckpt-per-octave``, ``--ckpt-every``) writes them.

    >>> log_spaced_steps(100)
    [0, 1, 2, 3, 4, 6, 7, 10, 13, 18, 24, 32, 42, 56, 75, 100]
    """
    total = _check_total(total)
    steps: Set[int] = {0, total}
    steps.update(_points_up_to(total, per_decade, per_octave))
    if every > 0:
        steps.update(range(every, total + 1, every))
    return sorted(steps)


def is_log_spaced_step(step: int, total: Optional[int] = None, per_decade: float = 8, per_octave: float = 0, every: int = 0) -> bool:
    """Whether lintrace's trainer checkpoints at ``step``. With ``total``
    None (not known yet), whether it would for any run of at least ``step``
    steps (the final step is then not included)."""
    return step in Schedule(total, per_decade, per_octave, every)


class Schedule:
    """Membership test for the checkpoint steps, for a known or an unknown
    final step (then the log-spaced points and every-N steps only)."""

    def __init__(self, total: Optional[int] = None, per_decade: float = 8, per_octave: float = 0, every: int = 0):
        self.total = None if total is None else _check_total(total)
        self.per_decade, self.per_octave, self.every = per_decade, per_octave, int(every)
        self._limit = -1
        self._points: Set[int] = set()

    def steps(self) -> List[int]:
        if self.total is None:
            raise ValueError("the final step is not known")
        return log_spaced_steps(self.total, self.per_decade, self.per_octave, self.every)

    def __contains__(self, step: int) -> bool:
        if step < 0 or (self.total is not None and step > self.total):
            return False
        if step == 0 or step == self.total:
            return True
        if self.every > 0 and step % self.every == 0:
            return True
        if step > self._limit:
            # Grow the cache geometrically so that a loop asks pow() O(log) times.
            self._limit = max(step, 2 * self._limit, 16)
            self._points = set(_points_up_to(self._limit, self.per_decade, self.per_octave))
        return step in self._points
