"""Replication backends: interchangeable objects behind :class:`.base.Replicator`."""

from .base import Disabled, ReplicationHealth, Replicator, Standalone

__all__ = ["Disabled", "ReplicationHealth", "Replicator", "Standalone"]
