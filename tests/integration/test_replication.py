"""Replication between real provider processes over a real nats-server (no mocks).

Every instance runs under its own lattice prefix, so each test can talk to one specific
instance; identical explicit ``STATE_REPL_SUBJECT`` / ``REPLAY_REQ_SUBJECT`` values in the link
values make them peers (see :mod:`tests.harness.replicas`). Fault tests put a
:class:`~wasmbus_testkit.FaultProxy` between instance A's *replication* connection and the
server, while A's lattice (RPC) connection stays direct: A keeps answering while its peers are
out of reach. The anti-entropy period is 1 s here (``REPLAY_HEARTBEAT_SECS``) to keep faults
short; assertions about "nothing arrives" wait a little over two periods.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import msgpack
import nats
import pytest

from contract.client import KeyValueError
from contract.nkeys import KeyPair
from provider.store import Change, bucket_of
from provider.store.codec import encode_change
from provider.store.entry import Entry, Kind
from tests.harness.replicas import (
    Replica,
    ReplicaSet,
    envelope_body,
    gather_limited,
    wait_converged,
)
from wasmbus_testkit import FaultProxy, NatsServer, flush_in_order

PERIOD = 1.0  # REPLAY_HEARTBEAT_SECS in these tests
#: How long to keep watching that something does *not* replicate: two periods and change.
QUIET_WAIT = 2.5 * PERIOD


def repl_values(url: str, tag: str, **extra: str) -> dict[str, str]:
    """Link values for a replication group named ``tag`` (explicit subjects, 1 s period)."""
    return {
        "NATS_URL": url,
        "STATE_REPL_SUBJECT": f"test.{tag}.events",
        "REPLAY_REQ_SUBJECT": f"test.{tag}.replay",
        "REPLAY_HEARTBEAT_SECS": str(PERIOD),
        **extra,
    }


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


# ----------------------------------------------------------------------------- state helpers
Layout = dict[str, str]  # key -> "str" | "list" | "set"


async def read_state(replica: Replica, layout: Layout) -> dict[str, object]:
    """What ``replica`` answers for each key: Get value (or None), list range, sorted set."""
    client = replica.client

    async def one(key: str, kind: str) -> object:
        if kind == "list":
            return await client.list_range(key, 0, -1)
        if kind == "set":
            return sorted(await client.set_query(key))
        answer = await client.get(key)
        return answer.value if answer.exists else None

    values = await gather_limited((one(k, kind) for k, kind in layout.items()), 50)
    return dict(zip(layout, values, strict=True))


def _diff(a: dict, b: dict, limit: int = 5) -> str:
    keys = [k for k in a.keys() | b.keys() if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in sorted(keys)[:limit])
    return f"{len(keys)} keys differ ({shown})"


async def assert_state(replicas: list[Replica], layout: Layout, expected: dict) -> None:
    """Every replica answers ``expected`` (list contents compared sorted: see populate())."""
    for replica in replicas:
        state = await read_state(replica, layout)
        for key, kind in layout.items():
            if kind == "list" and isinstance(state[key], list):
                state[key] = sorted(state[key])
        assert state == expected, f"{replica.name}: {_diff(state, expected)}"


async def assert_identical(replicas: list[Replica], layout: Layout) -> dict[str, object]:
    """All replicas answer exactly the same (list order included); returns that state."""
    first, *rest = [await read_state(r, layout) for r in replicas]
    for replica, state in zip(replicas[1:], rest, strict=True):
        assert state == first, f"{replicas[0].name} vs {replica.name}: {_diff(first, state)}"
    return first


async def populate(a: Replica, b: Replica, scale: int) -> tuple[Layout, dict[str, object]]:
    """Write a mixed data set through both replicas at once; returns (layout, expected state).

    Of every ``scale`` keys: 60% strings (half via each replica, a tenth later deleted through
    the *other* one), 15% counters incremented on both sides concurrently (also creating them
    concurrently), 12.5% lists and 12.5% sets added to from both sides. Expected lists are
    sorted (the interleaving of concurrent appends is deterministic but not predictable here).
    """
    n_str, n_ctr = scale * 60 // 100, scale * 15 // 100
    n_list = n_set = (scale - n_str - n_ctr) // 2
    layout: Layout = {}
    expected: dict[str, object] = {}
    ops = []
    for i in range(n_str):
        key, value = f"str:{i}", f"value-{i}-" + "x" * (i % 50)
        layout[key], expected[key] = "str", value
        ops.append((a if i % 2 else b).client.set(key, value))
    for i in range(n_ctr):
        key = f"ctr:{i}"
        layout[key], expected[key] = "str", str(i + 1 - 3)
        ops += [a.client.increment(key, i), b.client.increment(key, 1), a.client.increment(key, -3)]
    for i in range(n_list):
        key = f"list:{i}"
        layout[key], expected[key] = "list", sorted([f"a{i}", f"b{i}", f"c{i}"])
        ops += [a.client.list_add(key, f"a{i}"), b.client.list_add(key, f"b{i}")]
        ops.append(a.client.list_add(key, f"c{i}"))
    for i in range(n_set):
        key = f"set:{i}"
        layout[key], expected[key] = "set", ["m1", "m2", "m3"]
        ops += [a.client.set_add(key, "m1"), b.client.set_add(key, "m2")]
        ops.append(a.client.set_add(key, "m3"))
    await gather_limited(ops, 50)
    await wait_converged(lambda: assert_state([a, b], layout, expected), timeout=10)
    deleted = [f"str:{i}" for i in range(0, n_str, 10)]
    # Delete through the replica that did *not* write the key: it must have received it.
    removed = await gather_limited(
        (a if int(k[4:]) % 2 == 0 else b).client.delete(k) for k in deleted
    )
    assert all(removed)
    for key in deleted:
        expected[key] = None
    await wait_converged(lambda: assert_state([a, b], layout, expected), timeout=10)
    return layout, expected


# ----------------------------------------------------------------------------- basics
@pytest.mark.parametrize("count", [2, 3])
async def test_every_operation_replicates(replicas: ReplicaSet, tag: str, count: int) -> None:
    group = await replicas.start_many(
        [f"n{i}" for i in range(count)], repl_values(replicas.lattice_url, tag)
    )

    def on(i: int) -> Replica:
        return group[i % count]

    async def everywhere(check) -> None:
        async def all_agree() -> None:
            for replica in group:
                await check(replica.client, replica.name)

        await wait_converged(all_agree, timeout=5)

    def value_is(key: str, value: str | None):
        async def check(client, name):
            answer = await client.get(key)
            got = answer.value if answer.exists else None
            assert got == value, f"{name}: {key}={got!r}, want {value!r}"
            assert await client.contains(key) is (value is not None), name

        return check

    await on(0).client.set("greeting", "hello")
    await everywhere(value_is("greeting", "hello"))
    await on(1).client.set("greeting", "bonjour")  # overwrite from another instance
    await everywhere(value_is("greeting", "bonjour"))

    assert await on(1).client.increment("hits", 5) == 5
    await everywhere(value_is("hits", "5"))
    assert await on(2).client.increment("hits", -7) == -2  # builds on the replicated value
    await everywhere(value_is("hits", "-2"))

    assert await on(2).client.list_add("todo", "milk") == 1
    assert await on(2).client.list_add("todo", "eggs") == 2

    def todo_is(items):
        async def check(client, name):
            assert await client.list_range("todo", 0, -1) == items, name

        return check

    await everywhere(todo_is(["milk", "eggs"]))
    assert await on(0).client.list_add("todo", "bread") == 3
    await everywhere(todo_is(["milk", "eggs", "bread"]))
    assert await on(1).client.list_del("todo", "milk") is True
    await everywhere(todo_is(["eggs", "bread"]))

    assert await on(1).client.set_add("colors", "red") == 1
    assert await on(0).client.set_add("colors", "blue") == 1

    def colors_are(members):
        async def check(client, name):
            assert sorted(await client.set_query("colors")) == members, name

        return check

    await everywhere(colors_are(["blue", "red"]))
    assert await on(2).client.set_del("colors", "red") == 1
    await everywhere(colors_are(["blue"]))

    assert await on(0).client.delete("greeting") is True
    await everywhere(value_is("greeting", None))
    assert await on(1).client.list_clear("todo") is True
    await everywhere(todo_is([]))
    assert await on(2).client.set_clear("colors") is True
    await everywhere(colors_are([]))
    assert await on(0).client.delete("hits") is True
    await everywhere(value_is("hits", None))
    # A key re-created after its deletion replicates as the new incarnation.
    await on(1).client.set("greeting", "again")
    await everywhere(value_is("greeting", "again"))


async def test_500_concurrent_increments_sum_exactly(replicas: ReplicaSet, tag: str) -> None:
    group = await replicas.start_many(["a", "b", "c"], repl_values(replicas.lattice_url, tag))
    calls = (group[i % 3].client.increment("counter", 1) for i in range(500))
    results = await gather_limited(calls, 50)
    assert all(1 <= r <= 500 for r in results)  # each instance counts on from what it has

    await wait_converged(
        lambda: assert_state(group, {"counter": "str"}, {"counter": "500"}), timeout=5 * PERIOD
    )


async def test_concurrent_sets_pick_one_winner_everywhere(replicas: ReplicaSet, tag: str) -> None:
    group = await replicas.start_many(["a", "b", "c"], repl_values(replicas.lattice_url, tag))
    rounds = 20
    layout = {f"race:{n}": "str" for n in range(rounds)}
    await asyncio.gather(
        *(r.client.set(f"race:{n}", f"{r.name}-{n}") for n in range(rounds) for r in group)
    )

    async def converged() -> dict[str, object]:
        return await assert_identical(group, layout)

    state = await wait_converged(converged, timeout=5 * PERIOD)
    for n in range(rounds):
        assert state[f"race:{n}"] in {f"{r.name}-{n}" for r in group}


async def test_late_joiner_gets_full_state_by_snapshot(replicas: ReplicaSet, tag: str) -> None:
    values = repl_values(replicas.lattice_url, tag)
    a, b = await replicas.start_many(["a", "b"], values)
    layout, expected = await populate(a, b, scale=1996)
    # Four ~150 KB values in one bucket: more than one snapshot chunk's worth (256 KiB), so the
    # pull cursor must also advance *inside* a bucket, not only from bucket to bucket.
    crowded = [k for k in (f"big:{i}" for i in range(20_000)) if bucket_of(k) == 7][:4]
    for key in crowded:
        layout[key], expected[key] = "str", key + ":" + "y" * 150_000
    await asyncio.gather(*(a.client.set(k, expected[k]) for k in crowded))
    assert len(layout) == 2000
    await wait_converged(lambda: assert_state([b], layout, expected), timeout=10)

    # Writes keep coming while the newcomer replays.
    stop = asyncio.Event()

    async def keep_writing() -> int:
        n = 0
        while not stop.is_set():
            await (a if n % 2 else b).client.set(f"live:{n}", str(n))
            n += 1
        return n

    writer = asyncio.create_task(keep_writing())
    started = time.monotonic()
    late = await replicas.add("late", values).start()
    joined_in = time.monotonic() - started
    # Ready means the replay is over: the whole earlier state must be there now, without
    # waiting for anti-entropy to fill in.
    await assert_state([late], layout, expected)
    assert joined_in < 15, f"joining took {joined_in:.1f}s"
    assert "replay complete" in late.log_text()
    stop.set()
    written = await writer
    assert written > 0
    live = {f"live:{n}": "str" for n in range(written)}
    await wait_converged(
        lambda: assert_state([a, b, late], live, {k: k[5:] for k in live}), timeout=5
    )
    await assert_identical([a, late], layout)

    # And the newcomer is a full peer from then on.
    await late.client.set("from-late", "hi")
    await wait_converged(
        lambda: assert_state([a, b], {"from-late": "str"}, {"from-late": "hi"}), timeout=5
    )


async def test_sigkilled_instance_recovers_state_after_restart(
    replicas: ReplicaSet, tag: str
) -> None:
    values = repl_values(replicas.lattice_url, tag)
    a, b = await replicas.start_many(["a", "b"], values)
    layout, expected = await populate(a, b, scale=400)

    b.kill()
    assert not b.is_running()
    # The survivor keeps serving and changing while its peer is gone.
    for i in range(50):
        layout[f"after:{i}"], expected[f"after:{i}"] = "str", f"v{i}"
    await gather_limited(a.client.set(f"after:{i}", f"v{i}") for i in range(50))
    assert await a.client.increment("ctr:3", 10) == 11
    expected["ctr:3"] = "11"
    assert await a.client.delete("str:1") is True
    expected["str:1"] = None

    await b.restart()  # a fresh process: new node id, empty store, same lattice prefix
    await assert_state([b], layout, expected)  # complete as soon as it reports ready
    assert "replay complete" in b.log_text()
    await assert_identical([a, b], layout)

    await b.client.list_add("list:0", "after-restart")
    expected["list:0"] = sorted([*expected["list:0"], "after-restart"])
    await wait_converged(lambda: assert_state([a], layout, expected), timeout=5)


async def test_ttl_is_an_absolute_deadline(
    replicas: ReplicaSet, fault_proxy: FaultProxy, tag: str
) -> None:
    a = replicas.add("a", repl_values(replicas.lattice_url, tag))
    b = replicas.add("b", repl_values(fault_proxy.url, tag))  # B replicates through the proxy
    await replicas.start(a, b)

    async def get(replica: Replica, key: str) -> str | None:
        answer = await replica.client.get(key)
        return answer.value if answer.exists else None

    async def present(replica: Replica, key: str) -> None:
        assert await get(replica, key) is not None, f"{key} not on {replica.name} yet"

    # 1. Expiry replicates: visible on B, then gone on both about a second later.
    await a.client.set("short", "lived", expires=1)
    written = time.monotonic()
    await wait_converged(lambda: present(b, "short"), timeout=0.8)
    await asyncio.sleep(max(0.0, written + 1.2 - time.monotonic()))
    assert await get(a, "short") is None
    assert await get(b, "short") is None

    # 2. The deadline travels as an absolute time, not as "N seconds from arrival": B receives
    # the key a second late and must still expire it at A's deadline.
    fault_proxy.stall()
    await a.client.set("delayed", "v", expires=2)
    written = time.monotonic()
    await asyncio.sleep(1.0)
    assert await get(b, "delayed") is None  # still held back by the stalled link
    fault_proxy.heal()
    await wait_converged(lambda: present(b, "delayed"), timeout=written + 1.9 - time.monotonic())
    await asyncio.sleep(max(0.0, written + 2.2 - time.monotonic()))
    assert await get(a, "delayed") is None
    assert await get(b, "delayed") is None  # relative TTL would keep it until ~written + 3 s


# ----------------------------------------------------------------------------- faults
async def _write_both(a: Replica, b: Replica, prefix: str, count: int, limit: int = 50) -> Layout:
    """``count`` keys (value = key) through each of ``a`` and ``b``, interleaved.

    A small ``limit`` means small change batches, hence many replication messages to lose.
    """
    keys = {}
    for i in range(count):
        keys[f"{prefix}:a:{i}"], keys[f"{prefix}:b:{i}"] = a, b
    await gather_limited((r.client.set(k, k) for k, r in keys.items()), limit)
    return dict.fromkeys(keys, "str")


async def _fault_pair(replicas: ReplicaSet, proxy: FaultProxy, tag: str) -> tuple[Replica, Replica]:
    """A replicates through the proxy, B directly; both RPC connections are direct."""
    a = replicas.add("a", repl_values(proxy.url, tag))
    b = replicas.add("b", repl_values(replicas.lattice_url, tag))
    await replicas.start(a, b)
    return a, b


async def test_message_loss_is_repaired_by_anti_entropy(
    replicas: ReplicaSet, fault_proxy: FaultProxy, tag: str
) -> None:
    a, b = await _fault_pair(replicas, fault_proxy, tag)
    fault_proxy.drop(0.3, seed=7)
    layout = await _write_both(a, b, "lossy", 300, limit=4)
    assert len(layout) == 600
    fault_proxy.heal()
    healed = time.monotonic()
    assert fault_proxy.dropped > 0

    expected = {k: k for k in layout}
    await wait_converged(lambda: assert_state([a, b], layout, expected), timeout=2 * PERIOD + 3)
    print(f"converged {time.monotonic() - healed:.2f}s after heal, {fault_proxy.dropped} dropped")


async def test_a_gap_in_batch_numbers_triggers_repair_before_the_period(
    replicas: ReplicaSet, fault_proxy: FaultProxy, tag: str
) -> None:
    """With a 60 s anti-entropy period, lost batches are still repaired within seconds: the
    receiver sees a gap in the sender's batch numbers (or a digest reporting batches it never
    got) and starts a round at once."""
    slow = {"REPLAY_HEARTBEAT_SECS": "60"}
    a = replicas.add("a", repl_values(fault_proxy.url, tag, **slow))
    b = replicas.add("b", repl_values(replicas.lattice_url, tag, **slow))
    await replicas.start(a, b)
    fault_proxy.drop(1.0, subject_prefix=f"test.{tag}.events")  # A misses everything B sends
    for i in range(5):
        await b.client.set(f"gap:{i}", "lost")
    await asyncio.sleep(0.2)
    fault_proxy.heal()
    await b.client.set("gap:last", "arrives")  # its batch number reveals the gap to A
    expected = {f"gap:{i}": "lost" for i in range(5)} | {"gap:last": "arrives"}
    started = time.monotonic()
    await wait_converged(
        lambda: assert_state([a], dict.fromkeys(expected, "str"), expected), timeout=10
    )
    assert time.monotonic() - started < 10  # far inside the 60 s period


async def test_cut_then_heal_converges_and_health_reports_the_outage(
    replicas: ReplicaSet, fault_proxy: FaultProxy, tag: str
) -> None:
    a, b = await _fault_pair(replicas, fault_proxy, tag)
    layout = await _write_both(a, b, "before", 20)
    await wait_converged(lambda: assert_state([a, b], layout, {k: k for k in layout}))

    # Cut in the middle of a stream of writes on both sides.
    writing = asyncio.create_task(_write_both(a, b, "during", 150, limit=4))

    async def under_way() -> None:
        assert (await a.client.get("during:a:20")).exists

    await wait_converged(under_way, timeout=5, interval=0.01)
    fault_proxy.cut()
    cut_at = time.monotonic()
    layout |= await writing
    # A is cut off, not B: A's writes must not reach B now (the fault is real).
    await a.client.set("cut-probe", "x")
    await asyncio.sleep(0.2)
    assert not (await b.client.get("cut-probe")).exists
    assert not (await b.client.get("during:a:149")).exists  # written well after the cut

    # Past the grace (max(5 s, 2 periods)) health says so, with a reason...
    async def unhealthy() -> str:
        health = await a.health()
        assert not health.healthy
        return health.message

    message = await wait_converged(unhealthy, timeout=10, interval=0.25)
    assert "replication" in message and "down" in message, message
    assert time.monotonic() - cut_at >= 5.0
    # ...while RPC on A keeps working, reads and writes.
    assert await a.client.increment("while-down", 2) == 2
    assert (await a.client.get("during:a:7")).value == "during:a:7"
    assert (await a.client.get("while-down")).value == "2"
    layout |= await _write_both(a, b, "late", 20)
    layout["while-down"] = "str"
    layout["cut-probe"] = "str"
    expected = {k: k for k in layout} | {"while-down": "2", "cut-probe": "x"}
    assert (await b.health()).healthy

    fault_proxy.heal()
    healed = time.monotonic()
    await wait_converged(lambda: assert_state([a, b], layout, expected), timeout=2 * PERIOD + 4)
    converged_in = time.monotonic() - healed

    async def healthy_again() -> bool:
        health = await a.health()
        return health.healthy and health.message is None

    await wait_converged(healthy_again, timeout=5)
    print(f"converged {converged_in:.2f}s after heal")


@pytest.mark.parametrize(
    "noticed",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["short-unnoticed", "long-noticed-by-pings"],
)
async def test_blackhole_then_heal_converges(
    replicas: ReplicaSet, fault_proxy: FaultProxy, tag: str, noticed: bool
) -> None:
    """A silently dead link: brief (A never notices), or long enough for A's pings to fail."""
    a, b = await _fault_pair(replicas, fault_proxy, tag)
    fault_proxy.blackhole()
    layout = await _write_both(a, b, "void", 150)
    if noticed:  # unanswered pings (every 2 s, 2 outstanding): A drops the connection, retries

        def lost() -> None:
            assert "replication connection lost" in a.log_text()

        await wait_converged(lost, timeout=10, interval=0.2)
        layout |= await _write_both(a, b, "void2", 50)
    else:
        await asyncio.sleep(PERIOD)  # digests and repair requests vanish too
    assert not (await b.client.get("void:a:0")).exists
    assert fault_proxy.discarded > 0
    fault_proxy.heal()  # also resets the connections that lived through the blackhole
    await wait_converged(
        lambda: assert_state([a, b], layout, {k: k for k in layout}), timeout=2 * PERIOD + 4
    )

    async def healthy() -> None:
        health = await a.health()
        assert health.healthy and health.message is None, health

    await wait_converged(healthy, timeout=5)


async def test_partitioned_writes_on_both_sides_merge(
    replicas: ReplicaSet, fault_proxy: FaultProxy, tag: str
) -> None:
    a, b = await _fault_pair(replicas, fault_proxy, tag)
    layout = {"ctr": "str", "colors": "set", "log": "list", "owner": "str"}
    await a.client.increment("ctr", 10)
    await a.client.set_add("colors", "red")
    await a.client.set_add("colors", "green")
    await a.client.list_add("log", "start")
    await b.client.set("owner", "nobody")
    base = {"ctr": "10", "colors": ["green", "red"], "log": ["start"], "owner": "nobody"}
    await wait_converged(lambda: assert_state([a, b], layout, base))

    fault_proxy.cut()
    for _ in range(3):
        await a.client.increment("ctr", 1)
    await a.client.set_del("colors", "red")
    await a.client.set_add("colors", "amber")
    for item in ("a1", "a2", "a3"):
        await a.client.list_add("log", item)
    await a.client.set("owner", "from-a")

    await asyncio.gather(*(b.client.increment("ctr", 1) for _ in range(5)))
    await b.client.increment("ctr", 100)
    await b.client.set_del("colors", "red")
    assert await b.client.set_add("colors", "red") == 1  # re-added: a new, unseen tag
    await b.client.set_del("colors", "green")
    await b.client.set_add("colors", "blue")
    for item in ("b1", "b2"):
        await b.client.list_add("log", item)
    await b.client.set("owner", "from-b")

    side_a, side_b = await read_state(a, layout), await read_state(b, layout)
    assert side_a["ctr"] == "13" and side_b["ctr"] == "115"  # really partitioned
    assert side_a["log"] == ["start", "a1", "a2", "a3"] and side_b["log"] == ["start", "b1", "b2"]

    fault_proxy.heal()

    async def merged() -> None:
        state = await assert_identical([a, b], layout)  # the same answers on both sides...
        # ...and per the merge rules. Counters: every increment of both sides counts once.
        assert state["ctr"] == str(10 + 3 + 5 + 100), state
        # Sets: add wins over a concurrent remove of an older tag; unobserved removes stick.
        assert state["colors"] == ["amber", "blue", "red"], state
        # Lists: every append of both sides, each side's in its own order.
        log = state["log"]
        assert log[0] == "start" and sorted(log) == ["a1", "a2", "a3", "b1", "b2", "start"], log
        assert [x for x in log if x.startswith("a")] == ["a1", "a2", "a3"], log
        assert [x for x in log if x.startswith("b")] == ["b1", "b2"], log
        # Same key Set on both sides: one winner, the same everywhere.
        assert state["owner"] in ("from-a", "from-b"), state

    await wait_converged(merged, timeout=2 * PERIOD + 4)


# ----------------------------------------------------------------------------- configuration
async def test_first_link_without_nats_url_means_standalone(replicas: ReplicaSet, tag: str) -> None:
    url = replicas.lattice_url
    full = repl_values(url, tag)
    without_url = {k: v for k, v in full.items() if k != "NATS_URL"}
    alone = replicas.add("alone", without_url)
    b, witness = replicas.add("b", full), replicas.add("witness", full)
    await replicas.start(alone, b, witness)

    await alone.client.set("alone-1", "x")
    await b.client.set("b-1", "y")
    await wait_converged(lambda: assert_state([witness], {"b-1": "str"}, {"b-1": "y"}))

    # A later link with NATS_URL (another actor) is accepted, but changes nothing.
    second_actor = KeyPair.generate("module")
    second = await alone.put_link(second_actor, full)
    await second.set("alone-2", "x")
    await b.client.set("b-2", "y")
    await wait_converged(lambda: assert_state([witness], {"b-2": "str"}, {"b-2": "y"}))

    await asyncio.sleep(QUIET_WAIT)  # a few anti-entropy periods: nothing may arrive
    keys = {"alone-1": "str", "alone-2": "str", "b-1": "str", "b-2": "str"}
    assert await read_state(alone, keys) == {
        "alone-1": "x",
        "alone-2": "x",
        "b-1": None,
        "b-2": None,
    }
    for peer in (b, witness):
        assert await read_state(peer, keys) == {
            "alone-1": None,
            "alone-2": None,
            "b-1": "y",
            "b-2": "y",
        }
    assert (await alone.health()).healthy


async def test_deleting_the_first_link_does_not_stop_replication(
    replicas: ReplicaSet, tag: str
) -> None:
    """Replication, once decided by the first link, runs until shutdown: deleting that link (or
    any other) leaves it on."""
    full = repl_values(replicas.lattice_url, tag)
    a, b = replicas.add("a", full), replicas.add("b", full)
    await replicas.start(a, b)
    other = await a.put_link(KeyPair.generate("module"), full)
    first_link = a.link(replicas.actor)
    await replicas.nc.publish(a.subjects.link_del, first_link.encode_msgpack())
    await replicas.nc.flush()

    async def first_actor_unlinked() -> bool:
        with pytest.raises(KeyValueError, match="unlinked actor"):
            await a.client.contains("-")
        return True

    await wait_converged(first_actor_unlinked, timeout=5)
    await other.set("after-unlink", "still replicated")
    await wait_converged(
        lambda: assert_state([b], {"after-unlink": "str"}, {"after-unlink": "still replicated"})
    )
    assert (await a.health()).healthy


async def test_config_json_enables_replication_before_any_link(
    replicas: ReplicaSet, tag: str
) -> None:
    values = repl_values(replicas.lattice_url, tag)
    configured = replicas.add("configured", None, config_json=json.dumps(values), linked=False)
    await configured.start()
    b = await replicas.add("b", values).start()

    layout = {"k": "str", "n": "str", "l": "list"}
    await b.client.set("k", "v")
    await b.client.increment("n", 7)
    await b.client.list_add("l", "x")
    await asyncio.sleep(1.5 * PERIOD)  # live deltas, plus an anti-entropy round to be sure
    b.kill()  # from here on, only `configured` can hold this data

    # Its first link carries no replication settings at all; config_json already decided.
    await configured.put_link(replicas.actor, {})
    await assert_state([configured], layout, {"k": "v", "n": "7", "l": ["x"]})

    # And it still replicates: a fresh peer gets everything, including a write made since.
    await configured.client.set("after-link", "yes")
    layout["after-link"] = "str"
    await b.restart()
    await assert_state([b], layout, {"k": "v", "n": "7", "l": ["x"], "after-link": "yes"})


async def test_default_subjects_isolate_lattices_and_link_names(replicas: ReplicaSet) -> None:
    """No explicit subjects: the defaults embed the lattice prefix and the link name."""
    values = {"NATS_URL": replicas.lattice_url, "REPLAY_HEARTBEAT_SECS": str(PERIOD)}
    other_provider = KeyPair.generate("service")  # a second RPC identity on the same lattice
    # Lattice x twice (peers: the positive control), lattice y once.
    x1 = replicas.add("x1", values, lattice="lat-x")
    x2 = replicas.add("x2", values, lattice="lat-x", provider=other_provider)
    y1 = replicas.add("y1", values, lattice="lat-y")
    # Lattice z: link "default" twice (peers), link "other" once.
    z1 = replicas.add("z1", values, lattice="lat-z")
    z2 = replicas.add("z2", values, lattice="lat-z", provider=other_provider)
    z_other = replicas.add("z-other", values, lattice="lat-z", link_name="other")
    await replicas.start(x1, x2, y1, z1, z2, z_other)

    await x1.client.set("key", "from-x")
    await y1.client.set("key-y", "from-y")
    await z1.client.set("key", "from-z")
    await z_other.client.set("key-other", "from-other")
    await wait_converged(lambda: assert_state([x2], {"key": "str"}, {"key": "from-x"}))
    await wait_converged(lambda: assert_state([z2], {"key": "str"}, {"key": "from-z"}))

    await asyncio.sleep(QUIET_WAIT)
    keys = {"key": "str", "key-y": "str", "key-other": "str"}
    assert await read_state(y1, keys) == {"key": None, "key-y": "from-y", "key-other": None}
    assert await read_state(x2, keys) == {"key": "from-x", "key-y": None, "key-other": None}
    assert await read_state(z_other, keys) == {
        "key": None,
        "key-y": None,
        "key-other": "from-other",
    }
    assert await read_state(z2, keys) == {"key": "from-z", "key-y": None, "key-other": None}


# ----------------------------------------------------------------------------- hostile input
def _bad_messages() -> list[bytes]:
    def pack(obj: object) -> bytes:
        return msgpack.packb(obj, use_bin_type=True)

    def change(*fields: object) -> bytes:
        return pack(list(fields))

    good = pack(encode_change(Change("evil", Entry((1 << 40, "intruder", 0), Kind.STRING, "x"))))
    return [
        os.urandom(64),
        b"",
        b"\xc1\xc1\xc1",  # never valid msgpack
        os.urandom(1_000_000),  # over the size limit
        pack([1, "ch", "intruder"]),  # not a map
        pack({"f": 2, "t": "ch", "n": "intruder", "s": 1, "c": good}),  # future version
        pack({"f": 0, "t": "dg", "n": "intruder", "s": 1, "d": b"\0" * 8192}),
        pack({"t": "ch", "n": "intruder", "s": 1, "c": good}),  # no version
        pack({"f": 1, "t": "ch", "n": "", "s": 1, "c": good}),  # empty node
        pack({"f": 1, "t": "zz", "n": "intruder"}),  # unknown type
        pack({"f": 1, "t": "ch", "n": "intruder", "s": -1, "c": good}),
        pack({"f": 1, "t": "ch", "n": "intruder", "s": True, "c": good}),
        pack({"f": 1, "t": "ch", "n": "intruder", "c": good}),  # no sequence
        pack({"f": 1, "t": "ch", "n": "intruder", "s": 1, "c": [good]}),  # changes not bytes
        pack({"f": 1, "t": "ch", "n": "intruder", "s": 1, "c": good[:-3]}),  # truncated
        pack({"f": 1, "t": "ch", "n": "intruder", "s": 2, "c": os.urandom(200)}),
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 3,
                "c": change("evil", -5, "intruder", 0, 1, 0, "x", None),
            }
        ),  # negative stamp
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 4,
                "c": change("evil", 5, "intruder", 0, 9, 0, "x", None),
            }
        ),  # unknown kind
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 5,
                "c": change("evil", 5, "intruder", 0, 1, 0, 42, None),
            }
        ),  # string kind, int value
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 6,
                "c": change("evil", 5, "intruder", 0, 2, 0, [[[1, "n"]], {}, []], None),
            }
        ),
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 7,
                "c": change("evil", 5, "intruder", 0, 3, 0, [{"m": [["n", -1]]}, {}, []], None),
            }
        ),
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 8,
                "c": change("evil", 5, "intruder", 0, 2, 0, [[], {}, []], {"n": [1, 1]}),
            }
        ),
        pack(
            {
                "f": 1,
                "t": "ch",
                "n": "intruder",
                "s": 9,
                "c": change("evil", 5, "intruder", 0, 1, 0, "1", {"n": [1, "x"]}),
            }
        ),
        pack({"f": 1, "t": "ch", "n": "intruder", "s": 10, "c": change("evil", 5)}),
        pack({"f": 1, "t": "dg", "n": "intruder", "s": 1, "d": b"short"}),
        pack({"f": 1, "t": "dg", "n": "intruder", "s": 1, "d": [0] * 1024}),
        pack({"f": 1, "t": "sr", "n": "intruder", "s": 1}),  # right format, wrong subject
        pack({"f": 1, "t": "rr", "n": "intruder", "b": [1024], "c": b""}),
        pack({"f": 1, "t": "rr", "n": "intruder", "b": [-1], "c": b""}),
        pack({"f": 1, "t": "rr", "n": "intruder", "b": "all", "c": b""}),
        pack({"f": 1, "t": "sp", "n": "intruder", "b": 99999, "o": 0}),
        pack({"f": 1, "t": "sp", "n": "intruder", "b": 3, "o": -4}),
        pack({"f": 1, "t": "so", "n": "intruder", "k": "many"}),
    ]


async def test_malformed_and_foreign_messages_are_dropped(
    replicas: ReplicaSet, nats_server: NatsServer, tag: str
) -> None:
    values = repl_values(replicas.lattice_url, tag)
    # A logs at debug level, where an exception escaping a subscription callback shows up.
    a = replicas.add("a", values, log_level="debug")
    b = replicas.add("b", values)
    await replicas.start(a, b)
    events, replay = values["STATE_REPL_SUBJECT"], values["REPLAY_REQ_SUBJECT"]

    intruder = await nats.connect(nats_server.url)
    try:
        # Learn A's node id from its own traffic, to reach its direct (repair/pull) subject.
        sub = await intruder.subscribe(events)
        await flush_in_order(intruder)
        await a.client.set("probe", "1")
        sealed = (await sub.next_msg(timeout=5)).data  # a signed envelope around msgpack
        node = msgpack.unpackb(envelope_body(sealed), raw=False)["n"]
        await sub.unsubscribe()

        bad = _bad_messages()
        direct = f"{replay}.node.{node}"
        for subject in (events, f"{events}.digest", replay, direct):
            for body in bad:
                await intruder.publish(subject, body, reply=intruder.new_inbox())
        # A well-formed digest from a node that doesn't exist: A tries to repair with a ghost.
        ghost = msgpack.packb(
            {"f": 2, "t": "dg", "n": "ghost", "s": 0, "d": b"\0" * 8192}, use_bin_type=True
        )
        await intruder.publish(f"{events}.digest", ghost)
        # Requests that do get answers must not break the answering instance either.
        answers = await asyncio.gather(
            *(intruder.request(direct, body, timeout=1) for body in bad[-6:]),
            return_exceptions=True,
        )
        # Unsigned requests are never answered: nobody outside the lattice gets data out.
        assert all(isinstance(answer, Exception) for answer in answers), answers
        await intruder.flush()
    finally:
        await intruder.close()

    # Both are alive, healthy, and still replicating in both directions.
    await a.client.set("after-a", "1")
    await b.client.increment("after-b", 2)
    layout = {"probe": "str", "after-a": "str", "after-b": "str", "evil": "str"}
    expected = {"probe": "1", "after-a": "1", "after-b": "2", "evil": None}
    await wait_converged(lambda: assert_state([a, b], layout, expected), timeout=5)
    for replica in (a, b):
        assert replica.is_running()
        health = await replica.health()
        assert health.healthy and health.message is None, health
    assert "replication message dropped" in a.log_text()
    assert "replication connection error" not in a.log_text(), a.log_text()[-3000:]
    assert "Traceback" not in a.log_text(), a.log_text()[-3000:]
    assert "Traceback" not in b.log_text(), b.log_text()[-3000:]
