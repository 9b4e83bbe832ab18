"""Choosing a replication backend from configuration."""

from __future__ import annotations

from provider.store import KeyValueStore

from .base import Replicator, Standalone
from .config import ReplicationConfig


def build_replicator(store: KeyValueStore, config: ReplicationConfig) -> Replicator:
    if not config.enabled:
        return Standalone()
    store.tombstone_horizon_ms = int(config.tombstone_horizon_secs * 1000)
    if config.mode == "jetstream":
        from .jetstream import JetStreamReplicator

        return JetStreamReplicator(store, config)
    from .natsrepl import NatsReplicator

    return NatsReplicator(store, config)
