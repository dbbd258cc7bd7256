"""Deadlines that all last as long, under one timer: the request timeout and the header deadline.

A timer per request (``asyncio.timeout``, ``loop.call_later``) is a libuv timer under uvloop,
set and cancelled on every request: alternating A/B rounds measured the request timeout
alone at about a tenth of single-row throughput. When every deadline is ``seconds`` after
its key was armed, arming order is deadline order, so the oldest key is always the first
due: one timer, set for it, is enough. When it fires, every key past its deadline expires
and the timer is set again for the oldest left.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

_RESOLUTION = 0.001
"""uvloop's timers count whole milliseconds and may fire that much early: a key this close
to its deadline expires now, rather than the timer being set again for a moment later."""


class Deadlines(Generic[K]):
    """Keys that expire ``seconds`` after they were last armed, unless disarmed before;
    ``on_expiry(key)`` is called on the event loop for each one that does."""

    def __init__(self, seconds: float, on_expiry: Callable[[K], None]) -> None:
        self.seconds = seconds
        self._on_expiry = on_expiry
        self._due: dict[K, float] = {}
        """Armed keys and their deadlines, in deadline order: a dict keeps insertion order,
        removals do not reorder it, and a key armed again moves to the end."""
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._due)

    def arm(self, key: K) -> None:
        """``key`` expires ``seconds`` from now (instead of at any earlier deadline)."""
        loop = asyncio.get_running_loop()
        self._due.pop(key, None)
        deadline = loop.time() + self.seconds
        self._due[key] = deadline
        if self._timer is None or self._loop is not loop:
            self._timer = loop.call_at(deadline, self._expire)
            self._loop = loop

    def disarm(self, key: K) -> None:
        """``key`` does not expire (a no-op for a key not armed)."""
        self._due.pop(key, None)

    def _expire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._due:
            key, deadline = next(iter(self._due.items()))
            if deadline > now + _RESOLUTION:
                self._timer = loop.call_at(deadline, self._expire)
                return
            del self._due[key]
            self._on_expiry(key)
