"""MAX_MEMORY: parsing, the default from cgroups, the running estimate and the OOM refusal.

Redis' ``maxmemory`` with ``noeviction`` is the model: above the limit every write that grows
memory answers Redis' OOM text and changes nothing; reads and deletes keep working; changes from
replication peers are always applied (refusing them would make replicas diverge).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from contract.nkeys import KeyPair
from contract.wire import HostData, LinkDefinition
from provider import memory
from provider.observe.introspection import instance_status
from provider.observe.status import MemoryStatus
from provider.store import KeyValueStore, Kind, OutOfMemoryError, StoreError

OOM = "OOM command not allowed when used memory > 'maxmemory'."
ROOT = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("1b", 1),
        ("1k", 1000),
        ("1K", 1000),
        ("1kb", 1024),
        ("1KB", 1024),
        ("1Kb", 1024),
        ("1m", 1_000_000),
        ("2mb", 2 * 1024 * 1024),
        ("2MB", 2 * 1024 * 1024),
        ("1g", 1_000_000_000),
        ("1gb", 1024**3),
        ("3GB", 3 * 1024**3),
        (" 100mb ", 100 * 1024 * 1024),
        ("5 mb", 5 * 1024 * 1024),
    ],
)
def test_parse_memory_accepts_redis_suffixes(text: str, expected: int) -> None:
    """Bytes, or Redis' units: k/m/g are powers of 1000, kb/mb/gb powers of 1024."""
    assert memory.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["", "-1", "1.5mb", "1tb", "mb", "abc", "0x10", "1 2", "1kbb"])
def test_parse_memory_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="MAX_MEMORY"):
        memory.parse_memory(text)


def test_limit_from_values_keeps_the_default_and_reports_a_bad_value() -> None:
    assert memory.limit_from_values({}, 123) == (123, [])
    assert memory.limit_from_values({"MAX_MEMORY": "2mb"}, 123) == (2 * 1024 * 1024, [])
    assert memory.limit_from_values({"MAX_MEMORY": "0"}, 123) == (0, [])
    limit, problems = memory.limit_from_values({"MAX_MEMORY": "lots"}, 123)
    assert limit == 123
    assert len(problems) == 1 and "'lots'" in problems[0]


# -- the default: a quarter of what the process may use --------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max\n", None),  # cgroup v2: no limit
        ("1073741824\n", 1073741824),
        ("9223372036854771712\n", None),  # cgroup v1: no limit
        ("", None),
        ("garbage", None),
        ("0", None),
    ],
)
def test_parse_cgroup_limit(text: str, expected: int | None) -> None:
    assert memory.parse_cgroup_limit(text) == expected


def test_read_cgroup_limit_prefers_v2_then_v1(tmp_path: Path) -> None:
    assert memory.read_cgroup_limit(tmp_path) is None  # neither file
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert memory.read_cgroup_limit(tmp_path) == 536870912
    (tmp_path / "memory.max").write_text("268435456\n")
    assert memory.read_cgroup_limit(tmp_path) == 268435456
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.read_cgroup_limit(tmp_path) is None


def test_default_limit_is_a_quarter_of_the_smaller_of_cgroup_and_physical() -> None:
    gib = 1024**3
    assert memory.default_limit(memory.available_memory(2 * gib, 16 * gib)) == gib // 2
    assert memory.default_limit(memory.available_memory(None, 8 * gib)) == 2 * gib
    assert memory.default_limit(memory.available_memory(None, None)) == 0  # unknown: no limit
    assert memory.system_default_limit() > 0  # this machine knows its memory


# -- reporting --------------------------------------------------------------------------------


def test_health_note_warns_above_ninety_percent_and_when_full() -> None:
    assert memory.health_note(50, 0) is None  # no limit
    assert memory.health_note(90, 100) is None
    near = memory.health_note(95, 100)
    assert near is not None and "nearly full" in near and "95%" in near
    full = memory.health_note(120, 100)
    assert full is not None and "refused" in full


def test_memory_status_document() -> None:
    assert MemoryStatus(50, 200, 3).to_dict() == {
        "used_bytes": 50,
        "limit_bytes": 200,
        "used_ratio": 0.25,
        "refused_writes": 3,
    }
    assert MemoryStatus(50, 0).to_dict()["used_ratio"] is None


# -- the running estimate ---------------------------------------------------------------------


def test_estimate_follows_every_operation_and_matches_a_recount() -> None:
    """The incremental estimate equals a from-scratch recount after any mix of operations."""
    clock = FakeClock()
    store = KeyValueStore("node-a", now_ms=clock, tombstone_horizon_ms=1000)
    assert store.used_memory == 0
    steps = [
        lambda: store.set("s", "x" * 1000),
        lambda: store.set("s", "short"),
        lambda: store.set("t", "v", expires=1),
        lambda: store.increment("n", 5),
        lambda: store.increment("n", -2),
        lambda: store.list_add("l", "a" * 300),
        lambda: store.list_add("l", "b"),
        lambda: store.list_add("l", "a" * 300),
        lambda: store.list_del("l", "a" * 300),
        lambda: store.set_add("z", "m1"),
        lambda: store.set_add("z", "m2" * 100),
        lambda: store.set_add("z", "m1"),
        lambda: store.set_del("z", "m1"),
        lambda: store.set_del("z", "m2" * 100),  # emptied: kept, with its context
        lambda: store.set_add("z", "again"),
        lambda: store.delete("l"),
        lambda: store.list_add("l", "reborn"),
        lambda: store.set("l", "now a string"),
        lambda: store.delete("missing"),
    ]
    for step in steps:
        step()
        assert store.used_memory == store.recount_memory()
    clock.now += 2000  # "t" expires, then its tombstone is forgotten
    store.sweep()
    assert store.used_memory == store.recount_memory()
    clock.now += 2000
    store.delete("s")
    store.sweep()
    store.sweep()
    assert store.used_memory == store.recount_memory()


def test_estimate_follows_changes_applied_from_a_peer() -> None:
    a, b = KeyValueStore("node-a"), KeyValueStore("node-b")
    changes = [
        a.set("s", "v" * 500),
        a.list_add("l", "one")[1],
        a.list_add("l", "two")[1],
        a.set_add("z", "m")[1],
        a.increment("n", 3)[1],
        a.delete("s")[1],
    ]
    for change in changes:
        b.apply(change)
        b.apply(change)  # idempotent: the estimate does not drift either
        assert b.used_memory == b.recount_memory()
    assert b.used_memory == a.used_memory == a.recount_memory()


def test_a_large_value_costs_its_size() -> None:
    store = KeyValueStore("node-a")
    store.set("k", "v" * 100_000)
    assert 100_000 < store.used_memory < 100_000 * 1.01
    store.delete("k")
    assert store.used_memory < 1000


CALIBRATION = """
import gc, json, os, sys, uuid
from provider.store import KeyValueStore
def rss():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
store = KeyValueStore(uuid.uuid4().hex[:16])
kind, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
gc.collect()
before = rss()
for i in range(count):
    value = f"{i:0{size}x}"
    if kind == "string":
        store.set(f"user:{i}:session", value)
    elif kind == "list":
        store.list_add("big-list", value)
    else:
        store.set_add("big-set", value)
gc.collect()
print(json.dumps({"rss": rss() - before, "estimate": store.used_memory}))
"""


@pytest.mark.parametrize(
    ("kind", "count", "size"),
    [("string", 200, 100_000), ("list", 200, 100_000), ("string", 100_000, 32)],
)
def test_estimate_tracks_real_rss_growth_within_ten_percent(
    kind: str, count: int, size: int
) -> None:
    """Measured in a fresh interpreter, like bench/replication.py's memory probe."""
    out = subprocess.run(
        [sys.executable, "-c", CALIBRATION, kind, str(count), str(size)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout)
    assert figures["estimate"] == pytest.approx(figures["rss"], rel=0.10), figures


# -- the refusal ------------------------------------------------------------------------------


def full_store() -> KeyValueStore:
    """A store just above a 10 KB limit, holding a string, a counter, a list and a set."""
    store = KeyValueStore("node-a")
    store.max_memory = 10_000
    store.set("keep", "old value")
    store.increment("counter", 1)
    store.list_add("list", "item")
    store.set_add("set", "member")
    i = 0
    while store.used_memory <= store.max_memory:
        store.set(f"filler:{i}", "f" * 1000)
        i += 1
    return store


def test_writes_that_grow_memory_answer_the_redis_oom_text_and_change_nothing() -> None:
    store = full_store()
    used = store.used_memory
    writes = [
        lambda: store.set("keep", "new value"),
        lambda: store.set("brand-new", "v"),
        lambda: store.increment("counter", 1),
        lambda: store.increment("new-counter", 1),
        lambda: store.list_add("list", "more"),
        lambda: store.set_add("set", "more"),
        lambda: store.set_add("set", "member"),  # Redis refuses SADD whatever it would add
    ]
    for write in writes:
        with pytest.raises(OutOfMemoryError) as info:
            write()
        assert str(info.value) == OOM
        assert isinstance(info.value, StoreError)  # so the actor gets the text back
    assert store.oom_refusals == len(writes)
    assert store.used_memory == used
    assert store.get("keep") == "old value"
    assert store.get("counter") == "1"
    assert store.entry("brand-new") is None and store.entry("new-counter") is None
    assert store.list_range("list", 0, -1) == ["item"]
    assert store.set_query("set") == ["member"]


def test_reads_and_deletes_keep_working_when_full_and_free_room() -> None:
    store = full_store()
    assert store.get("keep") == "old value"
    assert store.contains("list")
    assert store.set_union(["set", "set"]) == ["member"]
    assert store.set_intersection(["set"]) == ["member"]
    assert store.list_del("list", "item")[0] is True
    assert store.set_del("set", "member")[0] == 1
    assert store.delete("counter")[0] is True
    i = 0
    while store.used_memory > store.max_memory:
        assert store.delete(f"filler:{i}")[0] is True
        i += 1
    store.set("keep", "new value")  # room again
    assert store.get("keep") == "new value"
    assert store.used_memory == store.recount_memory()


def test_changes_from_peers_are_applied_even_when_full() -> None:
    store = full_store()
    peer = KeyValueStore("node-b")
    before = store.used_memory
    store.apply(peer.set("from-peer", "p" * 5000))
    store.apply(peer.list_add("list", "peer item")[1])
    assert store.get("from-peer") == "p" * 5000
    assert store.entry("list").kind == Kind.LIST
    assert store.used_memory > before + 5000
    assert store.used_memory == store.recount_memory()


def test_zero_means_no_limit() -> None:
    store = KeyValueStore("node-a")
    store.max_memory = 0
    for i in range(50):
        store.set(f"k{i}", "v" * 1000)
    assert store.used_memory > 50_000
    store.set("still", "fine")


def test_a_write_that_crosses_the_limit_succeeds_and_the_next_is_refused() -> None:
    """Like Redis: the check happens before the command, against the current use."""
    store = KeyValueStore("node-a")
    store.max_memory = 5000
    store.set("big", "b" * 20_000)
    with pytest.raises(OutOfMemoryError):
        store.set("small", "s")


# -- wiring in the daemon ---------------------------------------------------------------------


def _daemon(config_json: str | None = None):
    from provider.daemon import ProviderDaemon

    provider = KeyPair.generate("service").public_key
    cluster = KeyPair.generate("cluster")
    host_data = HostData(
        host_id=KeyPair.generate("server").public_key,
        lattice_rpc_prefix="default",
        link_name="default",
        lattice_rpc_url="127.0.0.1:4222",
        provider_key=provider,
        invocation_seed=cluster.seed,
        env_values={},
        instance_id=str(uuid.uuid4()),
        link_definitions=[],
        cluster_issuers=[cluster.public_key],
        config_json=config_json,
    )
    return ProviderDaemon(host_data), provider


def _link(provider: str, values: dict[str, str]) -> LinkDefinition:
    return LinkDefinition(
        actor_id=KeyPair.generate("module").public_key,
        provider_id=provider,
        link_name="default",
        contract_id="wasmcloud:keyvalue",
        values=values,
    )


def test_daemon_defaults_to_a_quarter_of_memory_and_the_first_link_sets_max_memory() -> None:
    daemon, provider = _daemon()
    assert daemon.store.max_memory == memory.system_default_limit()
    daemon.on_link(_link(provider, {"max_memory": "2mb"}))  # keys are case-insensitive
    assert daemon.store.max_memory == 2 * 1024 * 1024
    daemon.on_link(_link(provider, {"MAX_MEMORY": "5mb"}))
    assert daemon.store.max_memory == 2 * 1024 * 1024


def test_daemon_config_json_wins_and_a_bad_value_keeps_the_default() -> None:
    daemon, provider = _daemon(json.dumps({"MAX_MEMORY": "1gb"}))
    daemon._configure_memory(daemon._config_values, "config_json")  # what run() does first
    daemon.on_link(_link(provider, {"MAX_MEMORY": "2mb"}))
    assert daemon.store.max_memory == 1024**3
    daemon, provider = _daemon()
    daemon.on_link(_link(provider, {"MAX_MEMORY": "plenty"}))
    assert daemon.store.max_memory == memory.system_default_limit()


def test_daemon_health_and_status_report_memory() -> None:
    daemon, _ = _daemon()
    daemon.store.max_memory = 10_000
    assert "memory" not in (daemon.health().message or "")
    daemon.store.set("big", "b" * 9_500)
    health = daemon.health()
    assert health.healthy and "nearly full" in health.message
    daemon.store.set("bigger", "b" * 5_000)
    health = daemon.health()
    assert health.healthy and "memory full" in health.message
    status = instance_status(daemon).to_dict()
    assert status["memory"]["limit_bytes"] == 10_000
    assert status["memory"]["used_bytes"] == daemon.store.used_memory > 10_000
