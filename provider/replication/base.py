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
from typing import Protocol

from provider.store import Change

#: Replication may be down this long (or two anti-entropy periods, if longer) before health
#: says so: long enough to ride out a server restart or a leader election.
MIN_GRACE_SECS = 5.0


def health_grace_secs(heartbeat_secs: float = 0.0) -> float:
    """How long a replication outage stays out of health (both backends; JetStream has no
    heartbeat, so it gets the minimum)."""
    return max(MIN_GRACE_SECS, 2 * heartbeat_secs)


class ReplicationError(Exception):
    """A write could not be made durable; the text goes back to the actor."""


@dataclass(slots=True, frozen=True)
class ReplicationHealth:
    healthy: bool
    message: str | None = None


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
