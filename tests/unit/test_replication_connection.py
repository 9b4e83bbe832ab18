"""provider.replication.connection: the connection both backends keep, driven in-process.

nats-py is replaced by a fake connection whose callbacks the test fires (a drop, a reconnect, a
close for good), and the clock is a counter the test advances: the keeper's bookkeeping
(downtime and its grace, waiting writes released, the rebuild, the stop sequence and which of
these log a warning) is checked without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from provider.replication import connection as connection_module
from provider.replication.acks import AckTracker
from provider.replication.base import peer_status, running_health
from provider.replication.clockguard import ClockGuard
from provider.replication.connection import ConnectionKeeper
from provider.supervisor import Supervisor

LOST = "test connection lost; serving local state"
Callback = Callable[[], Awaitable[None]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeConnection:
    """What the keeper uses of a nats-py client, with its callbacks in the test's hands."""

    def __init__(self, callbacks: dict[str, Any]) -> None:
        self.callbacks = callbacks
        self.is_closed = False
        self.closes = 0

    async def fire(self, name: str) -> None:
        callback: Callback = self.callbacks[name]
        await callback()

    async def drop(self) -> None:
        await self.fire("disconnected_cb")

    async def restore(self) -> None:
        await self.fire("reconnected_cb")

    async def close(self) -> None:
        """As nats-py does: closed, then the disconnected and closed callbacks."""
        self.closes += 1
        self.is_closed = True
        await self.drop()
        await self.fire("closed_cb")


class Server:
    """Stands in for ``connect_forever``: fails ``failures`` times, then hands out connections."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.connections: list[FakeConnection] = []
        self.options: list[dict[str, Any]] = []

    async def connect_forever(
        self,
        options: dict[str, Any],
        on_failure: Callable[[Exception], None],
        **callbacks: Any,
    ) -> FakeConnection:
        self.options.append(options)
        while self.failures:
            self.failures -= 1
            on_failure(ConnectionRefusedError("refused"))
        nc = FakeConnection(callbacks)
        self.connections.append(nc)
        return nc


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, failures: int = 0, **hooks: Any) -> None:
        self.server = Server(failures)
        monkeypatch.setattr(connection_module, "connect_forever", self.server.connect_forever)
        self.clock = FakeClock()
        self.acks = AckTracker()
        self.supervisor = Supervisor(clock=self.clock)
        self.setups: list[tuple[FakeConnection, bool]] = []
        self.keeper = ConnectionKeeper(
            label="test",
            url="nats://user:secret@example:4222",
            options=lambda: {"name": "test"},
            clock=self.clock,
            acks=self.acks,
            supervisor=self.supervisor,
            log=structlog.get_logger("test"),
            grace_secs=5.0,
            **hooks,
        )
        self.set_up = asyncio.Event()

    async def setup(self, nc: Any, first: bool) -> None:
        self.setups.append((nc, first))
        self.set_up.set()

    async def start(self) -> FakeConnection:
        self.supervisor.spawn("connection", lambda: self.keeper.run(self.setup))
        return await self.next_setup()

    async def next_setup(self) -> FakeConnection:
        await asyncio.wait_for(self.set_up.wait(), 1.0)
        self.set_up.clear()
        return self.setups[-1][0]

    def waiting_write(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.expect(1, {"peer"}, [future])
        return future


def events(logs: Sequence[Mapping[str, Any]], level: str) -> list[str]:
    return [entry["event"] for entry in logs if entry["log_level"] == level]


def connected(keeper: ConnectionKeeper) -> bool:
    return keeper.connected


def current(keeper: ConnectionKeeper) -> object:
    """The keeper's connection (the fake one, to the type checker just an object)."""
    return keeper.nc


# ------------------------------------------------------------------ connecting
async def test_connects_sets_up_the_first_connection_and_counts_as_down_until_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(monkeypatch)
    keeper = harness.keeper
    assert not connected(keeper)  # nothing connected yet
    harness.clock.now += 6
    assert keeper.outage() == 6
    nc = await harness.start()
    assert harness.setups == [(nc, True)]
    assert current(keeper) is nc and connected(keeper) and keeper.outage() is None
    await keeper.stop()


async def test_an_unreachable_server_is_reported_with_the_url_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[str] = []
    harness = Harness(monkeypatch, failures=2, on_unreachable=lambda e: reported.append(str(e)))
    with capture_logs() as logs:
        await harness.start()
        await harness.keeper.stop()
    assert reported == ["refused", "refused"]
    warnings = [entry for entry in logs if entry["event"] == "test server unreachable"]
    assert len(warnings) == 2
    assert all("secret" not in entry["url"] and entry["error"] == "refused" for entry in warnings)


# ------------------------------------------------------------------ outages
async def test_a_drop_is_an_outage_with_a_grace_and_a_reconnect_ends_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lost: list[bool] = []
    restored: list[bool] = []
    harness = Harness(
        monkeypatch,
        lost_warning=LOST,
        on_lost=lambda: lost.append(True),
        on_restored=lambda: restored.append(True),
    )
    keeper = harness.keeper
    nc = await harness.start()
    with capture_logs() as logs:
        await nc.drop()
        await nc.drop()  # nats-py may say so again while reconnecting: one outage, one warning
    assert events(logs, "warning") == [LOST]
    assert lost == [True, True] and not connected(keeper)
    harness.clock.now += 5
    assert keeper.outage() is None  # within the grace
    harness.clock.now += 1
    assert keeper.outage() == 6
    await nc.restore()
    assert restored == [True] and connected(keeper) and keeper.outage() is None
    await keeper.stop()


async def test_without_a_lost_warning_a_drop_logs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(monkeypatch)
    nc = await harness.start()
    with capture_logs() as logs:
        await nc.drop()
    assert logs == [] and not connected(harness.keeper)
    await harness.keeper.stop()


async def test_a_close_for_good_releases_the_writes_and_rebuilds_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(monkeypatch, lost_warning=LOST)
    keeper = harness.keeper
    first = await harness.start()
    write = harness.waiting_write()
    with capture_logs() as logs:
        await first.close()  # nats-py gave up on it
        second = await harness.next_setup()
    assert write.done()
    assert events(logs, "warning") == [LOST, "test connection closed for good; rebuilding it"]
    assert harness.setups == [(first, True), (second, False)]
    assert current(keeper) is second and connected(keeper)
    await keeper.stop()


async def test_callbacks_of_a_replaced_connection_no_longer_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(monkeypatch, lost_warning=LOST)
    first = await harness.start()
    await first.close()
    second = await harness.next_setup()
    with capture_logs() as logs:
        await first.drop()  # a late callback of the connection given up on
    assert logs == [] and connected(harness.keeper)
    assert current(harness.keeper) is second
    await harness.keeper.stop()


# ------------------------------------------------------------------ stopping
async def test_stop_releases_writes_stops_tasks_flushes_and_closes_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lost: list[bool] = []
    harness = Harness(monkeypatch, lost_warning=LOST, on_lost=lambda: lost.append(True))
    nc = await harness.start()
    write = harness.waiting_write()
    flushed: list[bool] = []

    async def flush() -> None:
        assert not nc.is_closed  # what is still pending goes out before the close
        flushed.append(True)

    with capture_logs() as logs:
        await harness.keeper.stop(flush=flush)
    assert write.done() and flushed == [True]
    assert nc.closes == 1 and nc.is_closed
    assert events(logs, "warning") == []  # the disconnect is ours: no "connection lost"
    assert lost == [True]  # the backend still hears of it
    assert harness.supervisor.problem() is None


async def test_stop_skips_the_flush_when_the_connection_is_already_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = Harness(monkeypatch)
    nc = await harness.start()
    nc.is_closed = True
    flushed: list[bool] = []

    async def flush() -> None:
        flushed.append(True)

    await harness.keeper.stop(flush=flush)
    assert flushed == [] and nc.closes == 0


async def test_stop_is_bounded_when_the_close_hangs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "CLOSE_SECS", 0.05)
    monkeypatch.setattr(connection_module, "STOP_FLUSH_SECS", 0.05)
    harness = Harness(monkeypatch)
    nc = await harness.start()

    async def hang() -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(nc, "close", hang)
    await asyncio.wait_for(harness.keeper.stop(flush=hang), 1.0)


async def test_stop_before_any_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    harness = Harness(monkeypatch)
    await harness.keeper.stop()
    assert harness.keeper.nc is None


# ------------------------------------------------------------------ health and status parts
def test_running_health_notes_a_replay_clock_offenders_and_lagging_peers() -> None:
    clock = FakeClock()
    guard = ClockGuard(
        "me", 1000, clock=clock, counters={}, log=structlog.get_logger("test"), notify=print
    )
    acks = AckTracker()
    assert running_health(False, guard, acks).message is None
    assert running_health(True, guard, acks).message == "replaying"
    acks.expect(7, {"slow"}, [])
    acks.expire(7)
    health = running_health(True, guard, acks)
    assert health.healthy
    assert health.message is not None
    assert health.message.startswith("replaying; lagging peers slow:")


def test_peer_status_keeps_the_order_both_backends_show() -> None:
    clock = FakeClock()
    guard = ClockGuard(
        "me", 1000, clock=clock, counters={}, log=structlog.get_logger("test"), notify=print
    )
    status = peer_status(
        connected=True,
        replaying=False,
        write_ack="peers",
        peers=["a", "b"],
        clock_guard=guard,
        acks=AckTracker(),
    )
    assert list(status) == [
        "connected",
        "replaying",
        "write_ack",
        "peers",
        "lagging_peers",
        "ack_timeouts",
        "clock_offenders",
        "refused_by",
    ]
    assert status["peers"] == ["a", "b"] and status["lagging_peers"] == []
