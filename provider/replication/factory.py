"""Choosing a replication backend from configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provider.store import KeyValueStore

from .base import Disabled, Replicator, Standalone
from .config import ReplicationConfig
from .signing import Trust


def build_replicator(store: KeyValueStore, config: ReplicationConfig, trust: Trust) -> Replicator:
    if not config.enabled:
        return Standalone()
    store.tombstone_horizon_ms = int(config.tombstone_horizon_secs * 1000)
    if config.mode == "jetstream":
        from .jetstream import JetStreamReplicator

        return JetStreamReplicator(store, config, trust)
    from .natsrepl import NatsReplicator

    return NatsReplicator(store, config, trust)


if TYPE_CHECKING:
    # The backends implement Replicator by shape; this function, checked and never run, is
    # where mypy compares each of them with the protocol and names a member that drifted.
    from .jetstream import JetStreamReplicator
    from .natsrepl import NatsReplicator

    def _backends_are_replicators(
        standalone: Standalone,
        disabled: Disabled,
        nats: NatsReplicator,
        jetstream: JetStreamReplicator,
    ) -> None:
        backend: Replicator
        backend = standalone
        backend = disabled
        backend = nats
        backend = jetstream
        del backend
