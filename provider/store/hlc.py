"""Hybrid logical clock: wall-clock-ish timestamps that never go backwards.

Last-writer-wins needs timestamps that every replica orders the same way and that respect
causality: a write made after seeing another write must carry a larger timestamp, even when the
two machines' clocks disagree. A hybrid logical clock gives exactly that while staying close to
real time, so timestamps are still meaningful to humans and to TTL/GC horizons.

A stamp is one int: ``(milliseconds since the epoch << 16) | logical counter``. One int keeps the
per-key memory small and compares in one instruction; 16 bits of counter allow 65 536 events in
one millisecond before the clock borrows from the next millisecond, which is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1

#: A remote stamp this far ahead of our wall clock is not allowed to drag our clock forward; it
#: still merges (merge order never depends on the local clock), it just doesn't poison our stamps.
MAX_FORWARD_DRIFT_MS = 60_000


def wall_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000


def stamp_ms(stamp: int) -> int:
    """The physical (millisecond) part of a stamp."""
    return stamp >> LOGICAL_BITS


class HybridClock:
    """Issues strictly increasing stamps and absorbs stamps seen from peers."""

    __slots__ = ("_last", "_now_ms")

    def __init__(self, now_ms: Callable[[], int] = wall_ms) -> None:
        self._now_ms = now_ms
        self._last = 0

    def now(self) -> int:
        """A stamp larger than every stamp issued or observed before."""
        physical = self._now_ms() << LOGICAL_BITS
        last = self._last
        self._last = physical if physical > last else last + 1
        return self._last

    def observe(self, remote: int) -> None:
        """Fold in a peer's stamp so our next write orders after it (causality)."""
        if remote > self._last and stamp_ms(remote) - self._now_ms() <= MAX_FORWARD_DRIFT_MS:
            self._last = remote

    @property
    def last(self) -> int:
        return self._last
