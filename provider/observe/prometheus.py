"""Optional Prometheus text endpoint, off unless ``NATS_KVCACHE_METRICS_ADDR`` is set.

``NATS_KVCACHE_METRICS_ADDR=127.0.0.1:9464`` serves ``/metrics`` with the same numbers as the
status document (:mod:`provider.observe.introspection`): operation counts, errors and latency
quantiles, entries, memory (estimated use, ``MAX_MEMORY``, OOM refusals), health, replication
counters, lag and peers. An environment variable, not a link value, because the host, not an
actor, owns the process. prometheus_client serves it from its own thread; the collector only
reads a fresh status document per scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import structlog
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import CollectorRegistry

from provider.observe.status import InstanceStatus, OperationStats

log = structlog.get_logger("provider.observe.prometheus")

ENV_VAR = "NATS_KVCACHE_METRICS_ADDR"


class StatusCollector:
    """Turns a fresh status document into Prometheus families on every scrape."""

    def __init__(self, status: Callable[[], InstanceStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        labels = ["instance", "lattice", "link_name"]
        ident = [status.instance, status.lattice, status.link_name]
        calls = CounterMetricFamily(
            "kvcache_operations", "Invocations handled", labels=[*labels, "operation"]
        )
        errors = CounterMetricFamily(
            "kvcache_operation_errors",
            "Invocations answered with an error",
            labels=[*labels, "operation"],
        )
        latency = GaugeMetricFamily(
            "kvcache_operation_latency_seconds",
            "Recent latency quantiles per operation",
            labels=[*labels, "operation", "quantile"],
        )
        for operation, numbers in status.operations.items():
            calls.add_metric([*ident, operation], numbers.calls)
            errors.add_metric([*ident, operation], numbers.errors)
            for name, quantile in OperationStats.QUANTILES:
                value = getattr(numbers, name)
                if value is not None:
                    latency.add_metric([*ident, operation, quantile], value / 1000)
        yield calls
        yield errors
        yield latency
        yield _gauge(
            "kvcache_entries", "Stored entries (tombstones included)", labels, ident, status.entries
        )
        yield _gauge(
            "kvcache_healthy",
            "1 when the instance reports healthy",
            labels,
            ident,
            1 if status.healthy else 0,
        )
        yield _gauge("kvcache_links", "Linked actors", labels, ident, status.links)
        memory = status.memory
        if memory is not None:
            yield _gauge(
                "kvcache_memory_used_bytes",
                "Estimated memory the stored entries take",
                labels,
                ident,
                memory.used_bytes,
            )
            yield _gauge(
                "kvcache_memory_limit_bytes",
                "MAX_MEMORY (0: no limit)",
                labels,
                ident,
                memory.limit_bytes,
            )
            refused = CounterMetricFamily(
                "kvcache_memory_refused_writes",
                "Writes refused with OOM because memory was above MAX_MEMORY",
                labels=labels,
            )
            refused.add_metric(ident, memory.refused_writes)
            yield refused
        replication = status.replication
        for key, value in replication.counters.items():
            if key.endswith("_ms"):
                continue
            counter = CounterMetricFamily(
                f"kvcache_replication_{key}", f"Replication counter {key}", labels=labels
            )
            counter.add_metric(ident, value)
            yield counter
        yield _gauge(
            "kvcache_replication_peers",
            "Peers heard from recently",
            labels,
            ident,
            len(replication.peers),
        )
        if replication.lag_ms is not None:
            yield _gauge(
                "kvcache_replication_lag_seconds",
                "Recent delta delivery lag",
                labels,
                ident,
                replication.lag_ms / 1000,
            )


def _gauge(
    name: str, doc: str, labels: list[str], ident: list[str], value: float
) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, doc, labels=labels)
    gauge.add_metric(ident, value)
    return gauge


def start_from_environment(status: Callable[[], InstanceStatus]) -> str | None:
    """Serve ``/metrics`` when the environment asks for it; returns the address or None."""
    address = os.environ.get(ENV_VAR, "").strip()
    if not address:
        return None
    host, _, port = address.rpartition(":")
    try:
        registry = CollectorRegistry()
        registry.register(StatusCollector(status))
        start_http_server(int(port), addr=host or "0.0.0.0", registry=registry)
    except (ValueError, OSError) as error:
        log.error("metrics endpoint not started", address=address, error=str(error))
        return None
    log.info("metrics endpoint serving", address=address)
    return address
