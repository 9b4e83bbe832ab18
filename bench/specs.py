"""The driver's spec, written by an orchestrator: payload sets and phases as plain JSON dicts.

An orchestrator never runs load itself; it describes what the driver (``bench/driver.py``, its
own interpreter) should do and reads back one JSON result. This module is the orchestrator's
vocabulary for that document; :mod:`loads` is the driver's side, which runs each phase kind.
Everything here is pure data, so a spec can be printed, diffed or replayed.

A spec is ``{"url", "identity", "payloads", "phases"}``: ``identity`` is what the driver needs
to sign invocations (see ``Lattice.driver_identity``), ``payloads`` names sets of pre-signed
invocations, and every phase names the payload set it sends.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Target", "closed", "driver_spec", "kv_payloads", "kv_phase", "sweep"]


class Target(Protocol):
    """What a payload set is signed for: a provider's public key (``orchestra.Provider``)."""

    @property
    def key(self) -> str: ...


def driver_spec(
    url: str,
    phases: list[dict[str, Any]],
    *,
    identity: dict[str, str] | None = None,
    payloads: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The whole document the driver reads from stdin."""
    return {"url": url, "identity": identity or {}, "payloads": payloads or {}, "phases": phases}


def kv_payloads(
    provider: Target, op: str, key_fmt: str, count: int, **extra: Any
) -> dict[str, Any]:
    """A payload set: ``count`` signed ``op`` invocations for ``provider``.

    ``extra``: ``key_start``, ``key_count``, ``key_step`` (request ``i`` uses key number
    ``key_start + (i % key_count) * key_step``) and ``value_size`` (Set values, default 32).
    """
    return {"provider_key": provider.key, "op": op, "key_fmt": key_fmt, "count": count, **extra}


def closed(
    name: str,
    subject: str,
    payloads: str,
    inflight: int,
    seconds: float,
    n: int = 10**7,
    check: str = "kv",
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A closed-loop phase: ``n`` requests, ``inflight`` at a time, at most ``seconds``;
    with ``cpu_pids`` ({name: pid}) the CPU time of those processes and the driver too."""
    phase: dict[str, Any] = {
        "name": name,
        "kind": "closed",
        "subject": subject,
        "payloads": payloads,
        "n": n,
        "inflight": inflight,
        "time_limit": seconds,
        "check": check,
    }
    if cpu_pids:
        phase["cpu_pids"] = cpu_pids
    return phase


def kv_phase(
    name: str, bucket: str, op: str, inflight: int, seconds: float, n: int = 10**7, **extra: Any
) -> dict[str, Any]:
    """nats-py JetStream KV ``put``/``get`` in a closed loop (bucket created on first use,
    memory storage, direct get on; ``extra``: key_count, value_size, key_prefix, storage,
    direct, cpu_pids)."""
    return {
        "name": name,
        "kind": "kv",
        "bucket": bucket,
        "op": op,
        "n": n,
        "inflight": inflight,
        "time_limit": seconds,
        **extra,
    }


def sweep(
    name: str, subject: str, payloads: str, timeout: float, inflight: int = 64
) -> dict[str, Any]:
    """Get every key of ``payloads`` until all exist (see :func:`loads.sweep`)."""
    return {
        "name": name,
        "kind": "sweep",
        "subject": subject,
        "payloads": payloads,
        "timeout": timeout,
        "inflight": inflight,
    }
