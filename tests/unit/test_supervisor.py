"""The real :class:`provider.supervisor.Supervisor`, driven in-process with an injected clock.

No input a peer or an actor can send crashes a background task any more (every such crash
found was closed by validation), so a real-process trigger would need a test-only hook in the
provider. Instead the supervisor itself is exercised: a task that raises is logged, restarted
after the restart delay, and reported (which is what makes health false) for exactly the
penalty window, :data:`~provider.supervisor.CRASH_REPORT_SECS` on the supervisor's own clock,
and no longer. The clock is a plain counter the test advances, so the 60 s window takes no
time; only the restart delay (set to a few milliseconds) runs on the event loop's real clock.
"""

from __future__ import annotations

import asyncio

from structlog.testing import capture_logs

from provider.supervisor import CRASH_REPORT_SECS, Supervisor


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Flaky:
    """A task body that crashes the first ``crashes`` times it runs, then runs until stopped."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0
        self.running = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"boom {self.runs}")
        self.running.set()
        await asyncio.Event().wait()  # a healthy long-running task never returns


async def test_a_crash_is_logged_restarted_and_reported_for_the_penalty_window() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock, restart_delay=0.01)
    task = Flaky(crashes=1)
    with capture_logs() as logs:
        supervisor.spawn("sweep", task)
        await asyncio.wait_for(task.running.wait(), timeout=2)
    try:
        assert task.runs == 2  # crashed once, restarted once
        [crash] = [e for e in logs if e["log_level"] == "error"]
        assert crash["event"] == "background task crashed; restarting"
        assert crash["task"] == "sweep" and crash["error"] == "RuntimeError: boom 1"

        problem = supervisor.problem()
        assert problem is not None
        assert "'sweep' crashed (1x, last: RuntimeError: boom 1); restarted" in problem
        clock.advance(CRASH_REPORT_SECS)  # still inside the window (inclusive)
        assert supervisor.problem() == problem
        clock.advance(0.001)  # the window has passed: healthy again, the task still runs
        assert supervisor.problem() is None
        assert task.runs == 2
    finally:
        await supervisor.stop()


async def test_repeated_crashes_are_counted_and_the_window_restarts_at_the_last_one() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock, restart_delay=0.01)
    task = Flaky(crashes=3)
    supervisor.spawn("anti-entropy", task)
    try:
        await asyncio.wait_for(task.running.wait(), timeout=2)
        assert task.runs == 4
        assert "(3x, last: RuntimeError: boom 3)" in (supervisor.problem() or "")
        clock.advance(CRASH_REPORT_SECS + 1)
        assert supervisor.problem() is None
    finally:
        await supervisor.stop()


async def test_a_crash_in_a_one_shot_task_is_reported_but_not_rerun() -> None:
    clock = FakeClock()
    supervisor = Supervisor(clock=clock, restart_delay=0.01)
    runs: list[int] = []

    async def once() -> None:
        runs.append(1)
        raise ValueError("bad repair")

    supervisor.run_once("repair", once())
    await asyncio.sleep(0.1)  # several restart delays
    try:
        assert runs == [1]
        assert "'repair' crashed (1x, last: ValueError: bad repair)" in (supervisor.problem() or "")
    finally:
        await supervisor.stop()


async def test_stop_cancels_running_tasks_and_ends_restarts() -> None:
    supervisor = Supervisor(clock=FakeClock(), restart_delay=0.01)
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    supervisor.spawn("replay", forever)
    await asyncio.sleep(0)
    await supervisor.stop(timeout=1.0)
    assert cancelled.is_set()
    assert supervisor.problem() is None  # a cancellation is not a crash
