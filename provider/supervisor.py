"""One owner for background tasks: no orphans, no silent deaths.

A background task that dies unnoticed is worse than a crash: the sweep stops, memory grows,
and health stays green. Every long-running task (sweep, anti-entropy, replay, flushing) is
therefore started through a :class:`Supervisor`, which logs a crash, restarts the task after a
short pause, and reports the crash in health for a while. Short-lived tasks (one repair, one
early digest) are tracked too, so :meth:`Supervisor.stop` cancels and awaits everything, with a
bound: shutdown never waits on the network for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("provider.supervisor")

#: A crash shows in health this long after it happened.
CRASH_REPORT_SECS = 60.0
RESTART_DELAY_SECS = 1.0


@dataclass(slots=True)
class Crash:
    task: str
    error: str
    at: float
    count: int


class Supervisor:
    """Starts, restarts and stops a component's background tasks."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        restart_delay: float = RESTART_DELAY_SECS,
    ) -> None:
        self._clock = clock
        self._restart_delay = restart_delay
        self._tasks: set[asyncio.Task[object]] = set()
        self._stopping = False
        self.crashes: dict[str, Crash] = {}

    def spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` until it returns; restart it whenever it raises."""
        self._track(asyncio.create_task(self._keep_running(name, factory), name=name))

    def run_once(self, name: str, coro: Awaitable[None]) -> None:
        """Run ``coro`` once; a crash is logged and reported, not restarted."""
        self._track(asyncio.create_task(self._guard(name, coro), name=name))

    def _track(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping:
            if await self._guard(name, factory()):
                return
            await asyncio.sleep(self._restart_delay)

    async def _guard(self, name: str, coro: Awaitable[None]) -> bool:
        """Await ``coro``; True when it finished normally."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as error:
            previous = self.crashes.get(name)
            count = previous.count + 1 if previous else 1
            text = f"{type(error).__name__}: {error}"
            self.crashes[name] = Crash(name, text, self._clock(), count)
            log.error("background task crashed; restarting", task=name, error=text, count=count)
            return False
        return True

    def problem(self) -> str | None:
        """A health message naming recent crashes, or None."""
        now = self._clock()
        recent = [c for c in self.crashes.values() if now - c.at <= CRASH_REPORT_SECS]
        if not recent:
            return None
        return "; ".join(
            f"background task {c.task!r} crashed ({c.count}x, last: {c.error}); restarted"
            for c in recent
        )

    async def stop(self, timeout: float = 1.0) -> None:
        """Cancel every task and wait (at most ``timeout``) for them to finish."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=timeout)
