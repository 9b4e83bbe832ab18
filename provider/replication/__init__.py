"""Replication backends: interchangeable objects behind :class:`.base.Replicator`."""

from .base import ReplicationHealth, Replicator, Standalone

__all__ = ["ReplicationHealth", "Replicator", "Standalone"]
