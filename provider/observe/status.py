"""The status document as typed values, shared by the endpoint, the metrics and the CLI.

An instance describes itself once (:func:`provider.observe.introspection.instance_status`);
the micro service sends that description as JSON, :mod:`provider.observe.prometheus` exports its
numbers and ``nats-kvcache status`` / ``dev`` print it. Reading it through these dataclasses
instead of string keys means a renamed field breaks the type checker, not a dashboard at run
time.

The JSON shape is the contract with the outside (``nats micro stats``, scripts using
``status --json``), so :meth:`InstanceStatus.to_dict` writes exactly the documented keys, and
:meth:`InstanceStatus.from_dict` reads documents leniently: another instance of the lattice
may run an older release, and a missing or odd field must cost one table cell, not the command.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "InstanceStatus",
    "MemoryStatus",
    "OperationStats",
    "ReplicationStatus",
    "VerifierStatus",
]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class OperationStats:
    """Calls, errors and recent latency quantiles of one operation."""

    calls: int = 0
    errors: int = 0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None

    QUANTILES = (("p50_ms", "0.5"), ("p90_ms", "0.9"), ("p99_ms", "0.99"))

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"calls": self.calls, "errors": self.errors}
        for name, _quantile in self.QUANTILES:
            value = getattr(self, name)
            if value is not None:
                doc[name] = value
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> OperationStats:
        doc = _dict(doc)
        return cls(
            calls=_int(doc.get("calls")),
            errors=_int(doc.get("errors")),
            p50_ms=_number(doc.get("p50_ms")),
            p90_ms=_number(doc.get("p90_ms")),
            p99_ms=_number(doc.get("p99_ms")),
        )


@dataclass(frozen=True)
class MemoryStatus:
    """Estimated memory use against ``MAX_MEMORY`` (0: no limit)."""

    used_bytes: int
    limit_bytes: int
    refused_writes: int = 0

    @property
    def used_ratio(self) -> float | None:
        return round(self.used_bytes / self.limit_bytes, 4) if self.limit_bytes else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "used_bytes": self.used_bytes,
            "limit_bytes": self.limit_bytes,
            "used_ratio": self.used_ratio,
            "refused_writes": self.refused_writes,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> MemoryStatus | None:
        if not isinstance(doc, dict):
            return None
        return cls(
            used_bytes=_int(doc.get("used_bytes")),
            limit_bytes=_int(doc.get("limit_bytes")),
            refused_writes=_int(doc.get("refused_writes")),
        )


@dataclass(frozen=True)
class VerifierStatus:
    """How claims were verified: batches sent to the worker process, and calls done inline."""

    batches_offloaded: int = 0
    verified_inline: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches_offloaded": self.batches_offloaded,
            "verified_inline": self.verified_inline,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> VerifierStatus | None:
        if not isinstance(doc, dict):
            return None
        return cls(_int(doc.get("batches_offloaded")), _int(doc.get("verified_inline")))


#: Replication fields with a meaning of their own; every other number is a counter.
_REPLICATION_FIELDS = frozenset(
    {
        "mode",
        "node",
        "connected",
        "replaying",
        "write_ack",
        "peers",
        "lagging_peers",
        "lag_ms",
        "last_anti_entropy",
        "replay_seconds",
        "problem",
    }
)


@dataclass(frozen=True)
class ReplicationStatus:
    """What the replication backend reports: its mode and state, and its counters.

    ``counters`` holds every plain count a backend keeps (sent, received, dropped, repairs…);
    they are exported as Prometheus counters as they are, so a backend adding one needs no
    change here. ``details`` keeps backend-specific non-numeric fields (a stream name, the
    peers refused for their clocks) so the JSON document loses nothing.
    """

    mode: str
    node: str | None = None
    connected: bool | None = None
    replaying: bool | None = None
    write_ack: str | None = None
    peers: tuple[str, ...] = ()
    lagging_peers: tuple[str, ...] = ()
    lag_ms: float | None = None
    last_anti_entropy: float | None = None
    replay_seconds: float | None = None
    problem: str | None = None
    counters: dict[str, int | float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def replicating(self) -> bool:
        return self.mode not in ("standalone", "disabled", "-")

    def to_dict(self) -> dict[str, Any]:
        """Standalone and disabled instances say only their mode (and the problem); replicating
        ones always carry every state field, ``null`` where a backend has no value yet."""
        doc: dict[str, Any] = {"mode": self.mode}
        if self.problem is not None:
            doc["problem"] = self.problem
        if self.replicating:
            doc |= {
                "node": self.node,
                "connected": self.connected,
                "replaying": self.replaying,
                "write_ack": self.write_ack,
                "peers": list(self.peers),
                "lagging_peers": list(self.lagging_peers),
                "lag_ms": self.lag_ms,
                "last_anti_entropy": self.last_anti_entropy,
                "replay_seconds": self.replay_seconds,
            }
        return doc | self.details | self.counters

    @classmethod
    def from_dict(cls, doc: Any) -> ReplicationStatus:
        doc = _dict(doc)
        counters: dict[str, int | float] = {}
        details: dict[str, Any] = {}
        for key, value in doc.items():
            if key in _REPLICATION_FIELDS:
                continue
            if isinstance(value, int | float) and not isinstance(value, bool):
                counters[key] = value
            else:
                details[key] = value
        return cls(
            mode=_str(doc.get("mode"), "-"),
            node=doc.get("node") if isinstance(doc.get("node"), str) else None,
            connected=doc.get("connected") if isinstance(doc.get("connected"), bool) else None,
            replaying=doc.get("replaying") if isinstance(doc.get("replaying"), bool) else None,
            write_ack=doc.get("write_ack") if isinstance(doc.get("write_ack"), str) else None,
            peers=tuple(str(p) for p in doc.get("peers") or () if isinstance(p, str)),
            lagging_peers=tuple(
                str(p) for p in doc.get("lagging_peers") or () if isinstance(p, str)
            ),
            lag_ms=_number(doc.get("lag_ms")),
            last_anti_entropy=_number(doc.get("last_anti_entropy")),
            replay_seconds=_number(doc.get("replay_seconds")),
            problem=doc.get("problem") if isinstance(doc.get("problem"), str) else None,
            counters=counters,
            details=details,
        )


@dataclass(frozen=True)
class InstanceStatus:
    """One instance's status document."""

    instance: str
    node: str
    lattice: str
    provider_key: str
    link_name: str
    healthy: bool
    #: The health message; None (JSON null) from an instance with nothing to say, which
    #: :meth:`from_dict` reads back as "".
    message: str | None = ""
    uptime_secs: float = 0.0
    entries: int = 0
    memory: MemoryStatus | None = None
    links: int = 0
    replication: ReplicationStatus = field(default_factory=lambda: ReplicationStatus("-"))
    operations: dict[str, OperationStats] = field(default_factory=dict)
    verifier: VerifierStatus | None = None

    @property
    def calls(self) -> int:
        return sum(o.calls for o in self.operations.values())

    @property
    def errors(self) -> int:
        return sum(o.errors for o in self.operations.values())

    @property
    def worst_p99_ms(self) -> float:
        """The slowest operation's recent p99 (0 before the first call)."""
        return max((o.p99_ms or 0 for o in self.operations.values()), default=0)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "instance": self.instance,
            "node": self.node,
            "lattice": self.lattice,
            "provider_key": self.provider_key,
            "link_name": self.link_name,
            "healthy": self.healthy,
            "message": self.message,
            "uptime_secs": self.uptime_secs,
            "entries": self.entries,
        }
        if self.memory is not None:
            doc["memory"] = self.memory.to_dict()
        doc["links"] = self.links
        doc["replication"] = self.replication.to_dict()
        doc["operations"] = {name: o.to_dict() for name, o in self.operations.items()}
        if self.verifier is not None:
            doc["verifier"] = self.verifier.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> InstanceStatus:
        doc = _dict(doc)
        uptime = _number(doc.get("uptime_secs"))
        return cls(
            instance=str(doc.get("instance", "?")),
            node=_str(doc.get("node")),
            lattice=_str(doc.get("lattice")),
            provider_key=_str(doc.get("provider_key")),
            link_name=_str(doc.get("link_name")),
            healthy=doc.get("healthy") is True,
            message=_str(doc.get("message")),
            uptime_secs=0.0 if uptime is None else float(uptime),
            entries=_int(doc.get("entries")),
            memory=MemoryStatus.from_dict(doc.get("memory")),
            links=_int(doc.get("links")),
            replication=ReplicationStatus.from_dict(doc.get("replication")),
            operations={
                str(name): OperationStats.from_dict(stats)
                for name, stats in _dict(doc.get("operations")).items()
            },
            verifier=VerifierStatus.from_dict(doc.get("verifier")),
        )
