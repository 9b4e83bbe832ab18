"""The replication connection, kept the same way by both backends.

:class:`ConnectionKeeper` connects with backoff, hands each fresh connection to the backend's
``setup`` (subscribe, replay or tail), and rebuilds the whole connection when nats-py gives up
on it for good: nats-py reconnects by itself after most failures, but not after some (a
protocol or authorization error the server answers by closing the connection), and those must
not end replication. Meanwhile it times the outage for health, and when the backend stops it
runs the one stop sequence: release the waiting writes, cancel the supervised tasks (bounded),
flush what the backend still holds, close the connection (bounded).

The log lines carry the backend's ``label``: ``"{label} server unreachable"`` and ``"{label}
connection closed for good; rebuilding it"``. A disconnect the backend caused itself (its stop,
or the close of a connection being rebuilt) is not an outage: it logs no warning and does not
count as downtime.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS

from provider.logs import redact_url
from provider.natsconn import connect_forever
from provider.supervisor import Supervisor

from .acks import AckTracker

#: ``setup(nc, first)``: make a fresh connection useful; ``first`` is True for the first one.
Setup = Callable[[NATS, bool], Awaitable[None]]
Hook = Callable[[], None]

#: The stop sequence's bounds: shutdown never waits on the network for long.
STOP_TASKS_SECS = 1.0
STOP_FLUSH_SECS = 0.5
CLOSE_SECS = 1.0


@dataclass(eq=False, kw_only=True)
class ConnectionKeeper:
    """One backend's connection to its NATS server, for as long as the backend runs.

    ``options`` builds the nats-py options for each attempt. The hooks are optional:
    ``on_unreachable(error)`` when an attempt to connect fails, ``on_lost()`` when the
    connection drops (before it is counted as down), ``on_restored()`` once nats-py got it
    back, and ``on_error(error)`` as nats-py's error callback. ``lost_warning``, if given, is
    logged when an outage begins.
    """

    label: str
    url: str | None
    options: Callable[[], dict[str, Any]]
    clock: Callable[[], float]
    acks: AckTracker
    supervisor: Supervisor
    log: Any
    #: An outage shorter than this stays out of health.
    grace_secs: float
    lost_warning: str | None = None
    on_unreachable: Callable[[Exception], None] | None = None
    on_lost: Hook | None = None
    on_restored: Hook | None = None
    on_error: Callable[[Exception], Awaitable[None]] | None = None
    nc: NATS | None = field(default=None, init=False)
    #: Set first thing by :meth:`stop`: the disconnect that follows is ours.
    stopping: bool = field(default=False, init=False)
    #: When the current outage began; not connected yet counts as one.
    down_since: float | None = field(init=False)
    _closed: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    #: Identifies the connection whose callbacks count; None while none does.
    _current: object | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.down_since = self.clock()

    # ------------------------------------------------------------------ state
    @property
    def connected(self) -> bool:
        return self.down_since is None

    @property
    def closed_for_good(self) -> bool:
        """Whether nats-py gave up on the current connection (it is about to be rebuilt)."""
        return self._closed.is_set()

    def outage(self) -> float | None:
        """How long the connection has been down, once that is longer than the grace."""
        if self.down_since is None:
            return None
        down_for = self.clock() - self.down_since
        return down_for if down_for > self.grace_secs else None

    # ------------------------------------------------------------------ running
    async def run(self, setup: Setup) -> None:
        """Connect and set up; whenever nats-py closes the connection for good, do it again."""
        first = True
        while not self.stopping:
            await self._discard()
            nc = self.nc = await self._connect()
            await setup(nc, first)
            first = False
            await self._closed.wait()
            self._closed_for_good()

    async def stop(self, flush: Callable[[], Awaitable[None]] | None = None) -> None:
        """Answer the waiting writes, stop the backend's tasks, flush, disconnect; all bounded."""
        self.stopping = True  # the disconnect that follows is ours: not worth a warning
        self.acks.release_all()
        await self.supervisor.stop(timeout=STOP_TASKS_SECS)
        nc = self.nc
        if nc is None or nc.is_closed:
            return
        if flush is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(flush(), timeout=STOP_FLUSH_SECS)
        await _close(nc)

    async def _connect(self) -> NATS:
        closed = self._closed = asyncio.Event()
        token = self._current = object()

        def report(error: Exception) -> None:
            if self.on_unreachable is not None:
                self.on_unreachable(error)
            self.log.warning(
                f"{self.label} server unreachable", url=redact_url(self.url), error=str(error)
            )

        async def disconnected() -> None:
            if self._current is token:
                self._lost()

        async def reconnected() -> None:
            if self._current is token:
                self._restored()

        async def on_closed() -> None:
            closed.set()

        callbacks: dict[str, Any] = {}
        if self.on_error is not None:
            callbacks["error_cb"] = self.on_error
        nc = await connect_forever(
            self.options(),
            report,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            closed_cb=on_closed,
            **callbacks,
        )
        self.down_since = None
        return nc

    async def _discard(self) -> None:
        """Close the previous connection, if nats-py has not; its callbacks no longer count."""
        nc, self.nc = self.nc, None
        self._current = None
        if nc is not None and not nc.is_closed:
            await _close(nc)

    def _lost(self) -> None:
        if self.on_lost is not None:
            self.on_lost()
        if self.down_since is None and not self.stopping:
            self.down_since = self.clock()
            if self.lost_warning is not None:
                self.log.warning(self.lost_warning)

    def _restored(self) -> None:
        self.down_since = None
        if self.on_restored is not None:
            self.on_restored()

    def _closed_for_good(self) -> None:
        if self.stopping:
            return
        if self.down_since is None:
            self.down_since = self.clock()
        self.acks.release_all()
        self.log.warning(f"{self.label} connection closed for good; rebuilding it")


async def _close(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), timeout=CLOSE_SECS)
