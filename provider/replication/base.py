"""The one small interface every replication backend implements.

The RPC path calls :meth:`Replicator.publish` after each successful mutation and never waits
for the network: a replicated ``Set`` must answer as fast as a standalone one. Everything else
(catch-up, repair, reconnection) is the backend's own business, done in its own tasks.

:class:`Replicator` is a protocol: a backend implements it by shape, without inheriting from it.
mypy checks that every backend has that shape (see ``provider.replication.factory``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from provider.store import Change

if TYPE_CHECKING:
    from .acks import AckTracker
    from .clockguard import ClockGuard

#: Replication may be down this long (or two anti-entropy periods, if longer) before health
#: says so: long enough to ride out a server restart or a leader election.
MIN_GRACE_SECS = 5.0


def health_grace_secs(heartbeat_secs: float = 0.0) -> float:
    """How long a replication outage stays out of health (both backends; JetStream has no
    heartbeat, so it gets the minimum)."""
    return max(MIN_GRACE_SECS, 2 * heartbeat_secs)


def peer_expiry_secs(heartbeat_secs: float) -> float:
    """How long a silent peer stays in the peer table (both backends): several periods, so one
    lost heartbeat does not drop it, and never under 15 s."""
    return max(3 * heartbeat_secs, 15.0)


class ReplicationError(Exception):
    """A write could not be made durable; the text goes back to the actor."""


@dataclass(slots=True, frozen=True)
class ReplicationHealth:
    healthy: bool
    message: str | None = None


def running_health(replaying: bool, clock_guard: ClockGuard, acks: AckTracker) -> ReplicationHealth:
    """Healthy, with the notes both backends add: a replay under way, peers whose stamps we
    refuse, peers that lag."""
    notes = ["replaying"] if replaying else []
    notes += clock_guard.notes()
    lagging = acks.lagging_note()
    if lagging:
        notes.append(lagging)
    return ReplicationHealth(True, "; ".join(notes) or None)


def peer_status(
    *,
    connected: bool,
    replaying: bool,
    write_ack: str,
    peers: list[str],
    clock_guard: ClockGuard,
    acks: AckTracker,
) -> dict[str, object]:
    """The part of :meth:`Replicator.status` both backends show, in the order they show it."""
    return {
        "connected": connected,
        "replaying": replaying,
        "write_ack": write_ack,
        "peers": peers,
        "lagging_peers": sorted(acks.lagging),
        "ack_timeouts": acks.timeouts,
        "clock_offenders": clock_guard.offenders(),
        "refused_by": clock_guard.refusers(),
    }


class Replicator(Protocol):
    """A replication backend bound to one store."""

    name: str

    async def start(self) -> None:
        """Connect and catch up. Must not raise on an unreachable server: report it in health."""

    def publish(self, change: Change) -> Awaitable[None] | None:
        """Ship a local change to the peers.

        Asynchronous backends return None and never block the RPC path. A durable backend
        returns an awaitable that completes once the change is stored, or raises
        :class:`ReplicationError`; the actor's answer waits for it.
        """

    def health(self) -> ReplicationHealth:
        """How replication is doing, for the host's health checks."""

    def status(self) -> dict[str, object]:
        """Counters and state for introspection (peers, lag, repairs): a JSON object, which
        :meth:`provider.observe.status.ReplicationStatus.from_dict` reads."""

    async def stop(self) -> None:
        """Flush what can be flushed and disconnect."""


class Standalone:
    """No replication: the store is a plain local map."""

    name = "standalone"

    async def start(self) -> None:
        return None

    def publish(self, change: Change) -> None:
        return None

    def health(self) -> ReplicationHealth:
        return ReplicationHealth(True)

    def status(self) -> dict[str, object]:
        return {"mode": self.name}

    async def stop(self) -> None:
        return None


class Disabled(Standalone):
    """Replication was asked for but cannot run (no key to sign with): local state only,
    and health says why."""

    name = "disabled"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def health(self) -> ReplicationHealth:
        return ReplicationHealth(False, self.reason)

    def status(self) -> dict[str, object]:
        return {"mode": self.name, "problem": self.reason}
