"""The one small interface every replication backend implements.

The RPC path calls :meth:`Replicator.publish` after each successful mutation and never waits
for the network: a replicated ``Set`` must answer as fast as a standalone one. Everything else
(catch-up, repair, reconnection) is the backend's own business, done in its own tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from provider.store import Change


@dataclass(slots=True, frozen=True)
class ReplicationHealth:
    healthy: bool
    message: str | None = None


class Replicator(Protocol):
    """A replication backend bound to one store."""

    name: str

    async def start(self) -> None:
        """Connect and catch up. Must not raise on an unreachable server: report it in health."""

    def publish(self, change: Change) -> None:
        """Ship a local change to the peers. Non-blocking; never raises."""

    def health(self) -> ReplicationHealth:
        """How replication is doing, for the host's health checks."""

    def status(self) -> dict:
        """Counters and state for introspection (peers, lag, repairs)."""

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

    def status(self) -> dict:
        return {"mode": self.name}

    async def stop(self) -> None:
        return None
