"""provider.observe.status: one typed status document for the endpoint, the metrics and the CLI."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from provider.cli.status import render_table
from provider.observe.prometheus import StatusCollector
from provider.observe.status import (
    InstanceStatus,
    MemoryStatus,
    OperationStats,
    ReplicationStatus,
    VerifierStatus,
)

PLAIN = {
    "mode": "nats",
    "node": "0123456789abcdef",
    "connected": True,
    "replaying": False,
    "write_ack": "peers",
    "peers": ["fedcba9876543210"],
    "lagging_peers": [],
    "lag_ms": 1.25,
    "last_anti_entropy": 1_700_000_000.5,
    "replay_seconds": 0.2,
    "clock_offenders": [],
    "ack_timeouts": 2,
    "batches_sent": 7,
    "gaps": 0,
}


def _instance(replication: ReplicationStatus) -> InstanceStatus:
    return InstanceStatus(
        instance="i-1",
        node="0123456789abcdef",
        lattice="default",
        provider_key="VKEY",
        link_name="default",
        healthy=True,
        message="",
        uptime_secs=3.5,
        entries=4,
        memory=MemoryStatus(50, 200, 1),
        links=1,
        replication=replication,
        operations={
            "Get": OperationStats(3, 0, 0.1, 0.2, 0.3),
            "Set": OperationStats(2, 1, 0.4, 0.5, 0.9),
        },
        verifier=VerifierStatus(1, 4),
    )


def test_a_replicating_backend_document_survives_the_round_trip() -> None:
    repl = ReplicationStatus.from_dict(PLAIN)
    assert repl.peers == ("fedcba9876543210",)
    assert repl.counters == {"ack_timeouts": 2, "batches_sent": 7, "gaps": 0}
    assert repl.details == {"clock_offenders": []}
    assert repl.to_dict() == PLAIN
    doc = _instance(repl).to_dict()
    assert InstanceStatus.from_dict(doc).to_dict() == doc
    assert doc["memory"] == {
        "used_bytes": 50,
        "limit_bytes": 200,
        "used_ratio": 0.25,
        "refused_writes": 1,
    }


def test_standalone_and_disabled_say_only_their_mode() -> None:
    assert ReplicationStatus.from_dict({"mode": "standalone"}).to_dict() == {"mode": "standalone"}
    disabled = {"mode": "disabled", "problem": "no invocation_seed"}
    assert ReplicationStatus.from_dict(disabled).to_dict() == disabled


def test_summaries_the_cli_prints() -> None:
    status = _instance(ReplicationStatus.from_dict(PLAIN))
    assert (status.calls, status.errors, status.worst_p99_ms) == (5, 1, 0.9)
    table = render_table([status])
    assert "i-1" in table and "healthy" in table and "nats" in table


def test_prometheus_families_come_from_the_typed_document() -> None:
    families = {
        f.name: f
        for f in StatusCollector(lambda: _instance(ReplicationStatus.from_dict(PLAIN))).collect()
    }
    assert families["kvcache_replication_batches_sent"].samples[0].value == 7
    assert families["kvcache_replication_peers"].samples[0].value == 1
    assert families["kvcache_replication_lag_seconds"].samples[0].value == 0.00125
    assert families["kvcache_memory_limit_bytes"].samples[0].value == 200
    quantiles = {
        s.labels["quantile"] for s in families["kvcache_operation_latency_seconds"].samples
    }
    assert quantiles == {"0.5", "0.9", "0.99"}
    # state and timestamps are not counters
    assert "kvcache_replication_last_anti_entropy" not in families
    assert "kvcache_replication_replay_seconds" not in families


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(sorted(InstanceStatus.__dataclass_fields__)), json_values))
def test_any_document_from_another_instance_reads_without_raising(doc: dict) -> None:
    status = InstanceStatus.from_dict(doc)
    render_table([status])
    status.to_dict()
