"""When the canary challenger must be rolled back: its errors and p99 latency against the
champion's over a window of recent requests. Pure: no clock, no I/O.

Each version keeps its last ``window`` outcomes (error or not, and the latency of those that
answered). Once both have ``min_requests`` of them, the challenger is rolled back when its
error rate exceeds the champion's by more than ``max_error_excess``, or its p99 latency
exceeds the champion's times ``max_p99_ratio``. Relative to the champion on purpose: a
machine under load slows both, and that is no reason to roll back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from pipeline.contracts import CHALLENGER_ROLE, CHAMPION_ROLE


@dataclass(frozen=True)
class RollbackBounds:
    max_error_excess: float
    max_p99_ratio: float
    window: int
    min_requests: int


@dataclass(frozen=True)
class WindowStats:
    requests: int
    error_rate: float
    p99_ms: float | None


class _Window:
    def __init__(self, size: int) -> None:
        self.errors: deque[bool] = deque(maxlen=size)
        self.latencies: deque[float] = deque(maxlen=size)

    def stats(self) -> WindowStats:
        n = len(self.errors)
        rate = sum(self.errors) / n if n else 0.0
        p99 = float(np.percentile(self.latencies, 99)) * 1000 if self.latencies else None
        return WindowStats(n, rate, p99)


class RollbackJudge:
    """Records each version's outcomes and says when the challenger must go."""

    def __init__(self, bounds: RollbackBounds) -> None:
        self.bounds = bounds
        self._windows = {role: _Window(bounds.window) for role in (CHAMPION_ROLE, CHALLENGER_ROLE)}

    def record(self, role: str, *, error: bool, seconds: float | None = None) -> None:
        """One request's outcome for ``role``; ``seconds`` is its model time when it answered."""
        window = self._windows[role]
        window.errors.append(error)
        if not error and seconds is not None:
            window.latencies.append(seconds)

    def stats(self, role: str) -> WindowStats:
        return self._windows[role].stats()

    def reset(self) -> None:
        """A new challenger: the old one's outcomes say nothing about it."""
        for window in self._windows.values():
            window.errors.clear()
            window.latencies.clear()

    def verdict(self) -> str | None:
        """Why the challenger must be rolled back, with the numbers; None while it may stay
        (or while either version has answered too few requests to say)."""
        bounds = self.bounds
        champion, challenger = self.stats(CHAMPION_ROLE), self.stats(CHALLENGER_ROLE)
        if min(champion.requests, challenger.requests) < bounds.min_requests:
            return None
        excess = challenger.error_rate - champion.error_rate
        if excess > bounds.max_error_excess:
            return (
                f"error rate {challenger.error_rate:.1%} over its last {challenger.requests} "
                f"requests against the champion's {champion.error_rate:.1%} (more than "
                f"{bounds.max_error_excess:.1%} above it, SERVING_CANARY_MAX_ERROR_RATE)"
            )
        if challenger.p99_ms is not None and champion.p99_ms is not None:
            limit = champion.p99_ms * bounds.max_p99_ratio
            if challenger.p99_ms > limit and challenger.p99_ms > 0:
                return (
                    f"p99 latency {challenger.p99_ms:.1f} ms over its last "
                    f"{challenger.requests} requests against the champion's "
                    f"{champion.p99_ms:.1f} ms (more than {bounds.max_p99_ratio:g} times it, "
                    "SERVING_CANARY_MAX_P99_RATIO)"
                )
        return None
