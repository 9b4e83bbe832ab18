"""Choosing a replication backend from configuration."""

from __future__ import annotations

from provider.store import KeyValueStore

from .base import Replicator, Standalone
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
