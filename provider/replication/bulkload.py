"""A replay, seen the same way by both backends: a bulk load of the whole state.

A replay (a peer's snapshot, or the stream from its start) creates millions of long-lived,
acyclic objects; letting the cyclic garbage collector rescan them as they pile up costs ~40% of
replay time. :class:`BulkLoad` pauses it for the load and then moves the loaded state out of its
sight for good (``gc.freeze``). It also logs progress about once a second, and keeps what health
and status show: whether a load is under way, and how long the last one took.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

#: A long replay logs its progress at most this often.
PROGRESS_INTERVAL_SECS = 1.0


class BulkLoad:
    """Whether a replay runs, since when, how far it got, and how long the last one took."""

    def __init__(self, log: Any, *, timer: Callable[[], float] = time.perf_counter) -> None:
        self._log = log
        self._timer = timer
        #: An instance starts by catching up: "replaying" until its first load ends.
        self.loading = True
        #: How long the last load took, once one ended.
        self.seconds: float | None = None
        self.started = self._last_log = self._timer()

    def begin(self) -> None:
        """A load starts now: the cyclic collector pauses until it ends."""
        self.loading = True
        self.started = self._last_log = self._timer()
        gc.disable()

    def elapsed(self) -> float:
        return self._timer() - self.started

    def progress(self, merged: int, remaining: int) -> None:
        """Log keys merged, keys per second and an ETA, if a second passed since the last line."""
        now = self._timer()
        if now - self._last_log < PROGRESS_INTERVAL_SECS:
            return
        self._last_log = now
        rate = merged / max(now - self.started, 1e-9)
        self._log.info(
            "replay progress",
            merged=merged,
            keys_per_sec=int(rate),
            eta_secs=round(remaining / rate, 1) if rate else None,
        )

    def finish(self) -> float:
        """The load ended (complete or not): freeze what it loaded; returns its seconds."""
        gc.freeze()
        gc.enable()
        self.loading = False
        self.seconds = self.elapsed()
        return self.seconds

    def abandon(self) -> None:
        """The load could not start: collect garbage again; no load is under way."""
        gc.enable()
        self.loading = False
