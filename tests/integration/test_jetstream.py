"""Durable JetStream replication (``REPLICATION=jetstream``) against real nats-servers.

Every provider instance is a real ``python -m provider`` process under its own lattice prefix
(so each one can be addressed on its own RPC subject), while instances of one test share a
``CACHE_PREFIX`` and therefore one stream, ``LATTICECACHE_{prefix}``. The lattice (RPC) traffic
always goes through a separate single nats-server, so killing a JetStream cluster node never
cuts a test off from the instances it is asking. The stream itself is inspected with nats-py's
JetStream manager and decoded with the provider's own record codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.errors import Error as NatsError
from nats.js import api

from contract.client import KeyValueError
from provider.replication.jetstream import decode_record, key_token
from provider.replication.signing import HEADER_BYTES
from provider.store import KeyValueStore
from provider.store.codec import new_node_id
from tests.harness.replicas import Replica, ReplicaSet, gather_limited, wait_converged
from wasmbus_testkit import NatsCluster, NatsServer, ProviderProcess, wait_for

#: Long enough for an R3 stream to elect a new leader and an ordered consumer to notice a
#: missing heartbeat (2 x 5 s) and be recreated.
FAILOVER_TIMEOUT = 40.0
WARNING_TEXT = "MORE THAN ONE MESSAGE PER SUBJECT"


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def js_server(module_nats_server: NatsServer) -> NatsServer:
    """One JetStream server: the lattice of every test, and the stream server of most."""
    return module_nats_server


@pytest.fixture(scope="module")
def _module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path_factory.mktemp("js-cluster"), size=3, name="kvjs")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture
def cluster(_module_cluster: NatsCluster, attach_log: Callable[[str, Path], None]) -> NatsCluster:
    """The module's 3-node JetStream cluster, with any node a previous test killed back up."""
    for index, server in enumerate(_module_cluster.servers):
        attach_log(server.server_name, server.log_path)
        if not server.is_running():
            _module_cluster.restart(index)
    return _module_cluster


@pytest.fixture
async def replicas(
    js_server: NatsServer, log_dir: Path, provider_factory: Callable[..., ProviderProcess]
) -> AsyncIterator[ReplicaSet]:
    async with ReplicaSet(js_server.url, log_dir, provider_factory) as replica_set:
        yield replica_set


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


# ----------------------------------------------------------------------------- helpers
def js_values(url: str, prefix: str, **extra: str) -> dict[str, str]:
    return {"NATS_URL": url, "REPLICATION": "jetstream", "CACHE_PREFIX": prefix, **extra}


def stream_name(prefix: str) -> str:
    return f"LATTICECACHE_{prefix}"


@contextlib.asynccontextmanager
async def jsm(servers: str | list[str]) -> AsyncIterator[nats.js.JetStreamManager]:
    nc = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=-1)
    try:
        yield nc.jsm()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2)


async def stream_subjects(manager: nats.js.JetStreamManager, prefix: str) -> dict[str, int]:
    info = await manager.stream_info(stream_name(prefix), subjects_filter=">")
    return dict(info.state.subjects or {})


async def stream_state(
    manager: nats.js.JetStreamManager, prefix: str, keys: list[str]
) -> KeyValueStore:
    """A scratch store holding exactly what the stream says about ``keys``."""
    store = KeyValueStore(node_id=new_node_id())
    for key in keys:
        subject = f"lc.{prefix}.{key_token(key)}"
        try:
            raw = await manager.get_last_msg(stream_name(prefix), subject)
        except nats.js.errors.NotFoundError:
            continue
        change = decode_record(raw.data[HEADER_BYTES:])  # the signature is the providers' business
        assert change.key == key, f"{subject} holds key {change.key!r}, not {key!r}"
        store.apply(change)
    return store


async def wait_log(replica: Replica, text: str, timeout: float = 10.0) -> str:
    return await wait_for(
        lambda: text in replica.log_text() and replica.log_text(), timeout, message=repr(text)
    )


async def wait_unhealthy(replica: Replica, timeout: float = 15.0):
    async def unhealthy():
        answer = await replica.health(timeout=0.5)
        return answer if not answer.healthy else None

    return await wait_for(unhealthy, timeout, interval=0.05, message=f"{replica} unhealthy")


async def value(replica: Replica, key: str) -> str | None:
    answer = await replica.client.get(key)
    return answer.value if answer.exists else None


# ----------------------------------------------------------------------------- stream set-up
async def test_creates_missing_stream_with_the_default_settings(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    a = replicas.add("a", js_values(js_server.url, prefix))
    await replicas.start(a)
    await a.client.set("k", "v")

    async with jsm(js_server.url) as manager:
        config = (await manager.stream_info(stream_name(prefix))).config
        subjects = await stream_subjects(manager, prefix)
    assert config.name == f"LATTICECACHE_{prefix}"
    assert config.subjects == [f"lc.{prefix}.>"]
    assert config.retention == api.RetentionPolicy.LIMITS
    assert config.max_consumers == -1
    assert config.max_msgs_per_subject == 1
    assert config.storage == api.StorageType.MEMORY
    assert config.num_replicas == 1
    assert config.duplicate_window == pytest.approx(120.0)
    assert config.max_bytes == -1
    assert subjects == {f"lc.{prefix}.{key_token('k')}": 1}
    assert WARNING_TEXT not in a.log_text()


async def test_storage_and_size_overrides_apply_to_a_stream_we_create(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    values = js_values(
        js_server.url, prefix, JS_STORAGE="file", JS_REPLICAS="1", JS_MAX_BYTES="4194304"
    )
    a = replicas.add("a", values)
    await replicas.start(a)
    async with jsm(js_server.url) as manager:
        config = (await manager.stream_info(stream_name(prefix))).config
    assert config.storage == api.StorageType.FILE
    assert config.max_bytes == 4194304
    assert config.num_replicas == 1
    assert config.max_msgs_per_subject == 1


async def test_precreated_custom_stream_is_used_unchanged(
    cluster: NatsCluster, replicas: ReplicaSet, prefix: str
) -> None:
    custom = api.StreamConfig(
        name=stream_name(prefix),
        subjects=[f"lc.{prefix}.>"],
        storage=api.StorageType.FILE,
        num_replicas=3,
        max_bytes=8 * 1024 * 1024,
        max_msgs_per_subject=1,
    )
    async with jsm(cluster.urls) as manager:
        await manager.add_stream(custom)
        before = (await manager.stream_info(stream_name(prefix))).config.as_dict()
        # Our own defaults would be memory / R1 / unlimited: none of that may be applied.
        a = replicas.add("a", js_values(",".join(cluster.urls), prefix))
        await replicas.start(a)
        await a.client.set("custom", "kept")
        await a.client.increment("n", 5)
        after = (await manager.stream_info(stream_name(prefix))).config.as_dict()
        stored = await stream_state(manager, prefix, ["custom", "n"])
    assert after == before
    assert after["storage"] == "file" and after["num_replicas"] == 3
    assert after["max_bytes"] == 8 * 1024 * 1024
    assert stored.get("custom") == "kept" and stored.get("n") == "5"
    assert "using existing lattice cache stream" in a.log_text()
    assert WARNING_TEXT not in a.log_text()


async def test_existing_stream_keeping_several_messages_per_subject_warns_loudly(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    async with jsm(js_server.url) as manager:
        await manager.add_stream(
            name=stream_name(prefix),
            subjects=[f"lc.{prefix}.>"],
            storage=api.StorageType.MEMORY,
            max_msgs_per_subject=10,
        )
        a = replicas.add("a", js_values(js_server.url, prefix))
        await replicas.start(a)
        line = next(
            line for line in (await wait_log(a, WARNING_TEXT)).splitlines() if WARNING_TEXT in line
        )
        assert "warn" in line.lower() and "max_msgs_per_subject=10" in line
        # Used as it is: still the operator's setting, and the cache still works.
        await a.client.set("k", "v")
        assert (await manager.stream_info(stream_name(prefix))).config.max_msgs_per_subject == 10
    assert await value(a, "k") == "v"


# ----------------------------------------------------------------------------- durability
async def test_acknowledged_writes_survive_killing_the_stream_leader(
    cluster: NatsCluster, replicas: ReplicaSet, prefix: str
) -> None:
    urls = ",".join(cluster.urls)
    values = js_values(urls, prefix, JS_REPLICAS="3", JS_STORAGE="file")
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)

    async with jsm(cluster.urls) as manager:
        info = await manager.stream_info(stream_name(prefix))
        assert info.config.num_replicas == 3 and info.config.storage == api.StorageType.FILE
        leader = info.cluster.leader
        assert leader and len(info.cluster.replicas or []) == 2

        # 300 Sets (one key each) and 160 increments on 4 counters, through both instances,
        # 16 calls in flight. A call that gets an error is retried (a new call) until the
        # stream is writable again, so the load spans the whole fail-over.
        ops: list[tuple[Replica, str, str]] = [
            (a if i % 2 else b, "set", f"s{i}") for i in range(300)
        ] + [(a if j % 2 else b, "incr", f"c{j % 4}") for j in range(160)]
        random.Random(7).shuffle(ops)
        acked_sets: dict[str, str] = {}
        acked_incr: Counter[str] = Counter()
        tried_incr: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        acked_before_kill = 0
        deadline = time.monotonic() + FAILOVER_TIMEOUT

        async def one(replica: Replica, kind: str, key: str) -> None:
            nonlocal acked_before_kill
            while time.monotonic() < deadline:
                try:
                    if kind == "set":
                        await replica.client.set(key, f"value-of-{key}")
                        acked_sets[key] = f"value-of-{key}"
                    else:
                        tried_incr[key] += 1
                        await replica.client.increment(key, 1)
                        acked_incr[key] += 1
                except (TimeoutError, KeyValueError, NatsError) as error:
                    # Not acknowledged: allowed to be lost (or to land anyway).
                    failures[type(error).__name__ + ": " + str(error)[:70]] += 1
                    await asyncio.sleep(0.2)
                    continue
                if not acked_before_kill and len(acked_sets) + acked_incr.total() >= 150:
                    acked_before_kill = len(acked_sets) + acked_incr.total()
                    cluster.by_name(leader).kill()  # SIGKILL, mid-load
                return

        await gather_limited((one(*op) for op in ops), limit=16)
        assert acked_before_kill, "the load ended before the kill"
        # The fail-over happened under load: some calls failed, and later ones succeeded.
        assert failures, "no call noticed the killed stream leader"
        assert len(acked_sets) + acked_incr.total() > acked_before_kill + 16, failures

        # Both instances write again, through the new stream leader.
        async def writable(replica: Replica) -> None:
            await replica.client.set(f"probe-{replica.name}", "ok")

        for replica in (a, b):
            await wait_converged(
                lambda r=replica: writable(r), FAILOVER_TIMEOUT, 0.2, f"{replica} writable"
            )
        new_info = await manager.stream_info(stream_name(prefix))
        assert new_info.cluster.leader and new_info.cluster.leader != leader

        keys = [*acked_sets, *acked_incr]

        def check(get: Callable[[str], str | None], where: str) -> None:
            lost = [k for k, v in acked_sets.items() if get(k) != v]
            assert not lost, f"{where} lost {len(lost)} acknowledged sets, e.g. {lost[:5]}"
            for key, count in acked_incr.items():
                total = int(get(key) or 0)
                assert count <= total <= tried_incr[key], f"{where}: {key}={total}, acked {count}"

        stored = await stream_state(manager, prefix, keys)
        check(stored.get, "the stream")

    async def instance_has_everything(replica: Replica) -> None:
        answers = await replica.values_of(keys)
        check(answers.get, replica.name)

    # A fresh instance can only know what the stream holds.
    c = replicas.add("c", values)
    await replicas.start(c)
    for replica in (a, b, c):
        await wait_converged(
            lambda r=replica: instance_has_everything(r), FAILOVER_TIMEOUT, 0.5, f"{replica}"
        )


async def test_state_is_restored_from_the_stream_after_every_instance_stopped(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    values = js_values(js_server.url, prefix)
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)
    ca, cb = a.client, b.client

    async def seen_by_both(key: str, kind: str = "str") -> None:
        """Wait until both instances answer the same for ``key``. Reads are local, so an
        operation that depends on a peer's write (deleting it, say) must wait for it to arrive:
        a delete of a key an instance has not seen yet is a no-op there."""

        async def read(replica: Replica) -> object:
            if kind == "list":
                return await replica.client.list_range(key, 0, -1)
            if kind == "set":
                return sorted(await replica.client.set_query(key))
            return await value(replica, key)

        async def same() -> None:
            assert await read(a) == await read(b)

        await wait_converged(same, 5, 0.01, f"{key} on both instances")

    for i in range(20):
        await (ca if i % 2 else cb).set(f"str{i}", f"text {i}")
    for _ in range(10):
        await ca.increment("hits", 3)
        await cb.increment("hits", -1)
    await ca.increment("neg", -7)
    for i in range(6):
        await (ca if i % 2 else cb).list_add("log", f"line{i}")
        await seen_by_both("log", "list")
    await cb.list_del("log", "line2")
    for member in ("x", "y", "z", "w"):
        await ca.set_add("tags", member)
    await seen_by_both("tags", "set")
    await cb.set_del("tags", "y")
    await ca.set("gone", "soon")
    await seen_by_both("gone")
    await cb.delete("gone")
    await ca.list_add("cleared-list", "q")
    await seen_by_both("cleared-list", "list")
    await cb.list_clear("cleared-list")
    await cb.set_add("cleared-set", "q")
    await seen_by_both("cleared-set", "set")
    await ca.set_clear("cleared-set")
    await ca.set("overwritten", "old")
    await seen_by_both("overwritten")
    await cb.set("overwritten", "new")

    expected = {
        **{f"str{i}": f"text {i}" for i in range(20)},
        "hits": "20",
        "neg": "-7",
        "gone": None,
        "overwritten": "new",
    }

    async def snapshot(replica: Replica) -> dict[str, object]:
        client = replica.client
        return {
            "strings": await replica.values_of(expected),
            "log": await client.list_range("log", 0, -1),
            "tags": sorted(await client.set_query("tags")),
            "cleared": (
                await client.contains("cleared-list"),
                await client.contains("cleared-set"),
                await client.list_range("cleared-list", 0, -1),
                await client.set_query("cleared-set"),
            ),
        }

    wanted = {
        "strings": expected,
        "log": ["line0", "line1", "line3", "line4", "line5"],
        "tags": ["w", "x", "z"],
        "cleared": (False, False, [], []),
    }
    for replica in (a, b):
        await wait_converged(lambda r=replica: _equal(snapshot(r), wanted), 10, 0.1)

    # Stop every instance; nothing but the stream remains.
    a.kill()
    b.kill()
    healths: list[tuple[bool, str | None]] = []

    async def ready_noting_health(replica: Replica) -> None:
        replica.launch()

        async def ready() -> bool:
            answer = await replica.health(timeout=0.5)
            healths.append((answer.healthy, answer.message))
            return answer.healthy and answer.message is None

        await wait_for(ready, 20, interval=0.02, message=f"{replica} ready")

    await asyncio.gather(*(ready_noting_health(r) for r in (a, b)))
    # While replaying, health may say so; it never reports an error.
    assert {h for h in healths} <= {(True, None), (True, "replaying")}, healths
    for replica in (a, b):
        assert await snapshot(replica) == wanted
    # And the restored state is live, mergeable state: writing on top of it still adds up.
    await a.client.increment("hits", 1)
    await wait_converged(lambda: _value_is(b, "hits", "21"), 10, 0.05)


async def _equal(snapshot, wanted) -> None:
    assert await snapshot == wanted


async def _value_is(replica: Replica, key: str, expected: str | None) -> None:
    assert await value(replica, key) == expected


async def test_concurrent_increments_through_two_instances_sum_exactly(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    values = js_values(js_server.url, prefix)
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)

    async def hammer(replica: Replica) -> list[int]:
        return await gather_limited((replica.client.increment("sum", 1) for _ in range(150)), 32)

    results_a, results_b = await asyncio.gather(hammer(a), hammer(b))
    # Every increment was acknowledged (no error reply), each instance saw its own grow.
    assert len(results_a) == len(results_b) == 150
    assert max(results_a) <= 300 and max(results_b) <= 300
    for replica in (a, b):
        await wait_converged(lambda r=replica: _value_is(r, "sum", "300"), 10, 0.05)
    async with jsm(js_server.url) as manager:
        assert (await stream_state(manager, prefix, ["sum"])).get("sum") == "300"


HOSTILE_KEYS = [
    "a.b.c",
    ".",
    "..",
    ">",
    "*",
    "a.*.b",
    "lc.x.>",
    "with space",
    " ",
    "tab\tand\nnewline",
    "ключ-🔑-鍵",
    "",
    "m" * 760,  # base64 token just under the 1024-character limit
    "k" * 1024,  # 1 KiB: named by hash
    "x" * 3072,  # 3 KiB
]


async def test_hostile_keys_map_to_single_safe_subject_tokens(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    values = js_values(js_server.url, prefix)
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)
    expected = {key: f"value #{i}" for i, key in enumerate(HOSTILE_KEYS)}
    for key, text in expected.items():
        await a.client.set(key, text)
    for replica in (a, b):
        await wait_converged(
            lambda r=replica: _values_are(r, expected), 10, 0.05, f"{replica} has all keys"
        )
    deleted = [">", "", "k" * 1024, "a.b.c"]
    for key in deleted:
        assert await b.client.delete(key) is True
        expected[key] = None
    for replica in (a, b):
        await wait_converged(lambda r=replica: _values_are(r, expected), 10, 0.05)

    async with jsm(js_server.url) as manager:
        subjects = await stream_subjects(manager, prefix)
        stored = await stream_state(manager, prefix, HOSTILE_KEYS)
    token = re.compile(rf"^lc\.{prefix}\.(_[A-Za-z0-9_-]*|h[0-9a-f]{{64}})$")
    assert all(token.match(subject) for subject in subjects), sorted(subjects)
    assert set(subjects) == {f"lc.{prefix}.{key_token(k)}" for k in HOSTILE_KEYS}
    assert set(subjects.values()) == {1}
    assert {k: stored.get(k) for k in HOSTILE_KEYS} == expected

    a.kill()
    b.kill()
    await replicas.start(a, b)
    for replica in (a, b):
        await _values_are(replica, expected)
    for replica in (a, b):
        # Deleted keys can be written again, and reach the peer.
        again = {">": f"again from {replica.name}"}
        await replica.client.set(">", again[">"])
        for peer in (a, b):
            await wait_converged(lambda p=peer, e=again: _values_are(p, e), 10, 0.05)


async def _values_are(replica: Replica, expected: dict[str, str | None]) -> None:
    assert await replica.values_of(expected) == expected


async def test_ttl_expires_on_every_instance_and_stays_expired_after_restart(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    values = js_values(js_server.url, prefix)
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)
    await a.client.set("short", "lived", expires=1)
    await a.client.set("keep", "me")
    # The peer got it (well within its second of life)...
    await wait_converged(lambda: _value_is(b, "short", "lived"), 0.9, 0.02)
    # ...and both forget it once the deadline passes.
    for replica in (a, b):
        await wait_converged(lambda r=replica: _value_is(r, "short", None), 5, 0.05)
        assert await replica.client.contains("short") is False

    a.kill()
    b.kill()
    await replicas.start(a, b)
    for replica in (a, b):
        assert await replica.values_of(["short", "keep"]) == {"short": None, "keep": "me"}


# ----------------------------------------------------------------------------- misconfiguration
async def test_without_jetstream_health_says_so_and_rpc_still_works(
    tmp_path: Path,
    log_dir: Path,
    provider_factory: Callable[..., ProviderProcess],
    attach_log: Callable[[str, Path], None],
    prefix: str,
) -> None:
    plain = NatsServer(tmp_path / "plain", jetstream=False)
    attach_log(plain.server_name, plain.log_path)
    with plain:
        async with ReplicaSet(plain.url, log_dir, provider_factory) as replicas:
            a = replicas.add("a", js_values(plain.url, prefix))
            a.launch()
            answer = await wait_unhealthy(a)
            assert "JetStream" in (answer.message or ""), answer
            assert a.is_running()
            # Serving its local state: reads and writes answer without errors.
            await a.client.set("k", "v")
            assert await value(a, "k") == "v"
            assert await a.client.increment("n", 2) == 2
            assert a.is_running()
            assert not (await a.health()).healthy
            assert "jetstream" in a.log_text().lower()
            assert "Traceback" not in a.log_text()


async def test_unusable_existing_stream_is_reported_not_fatal(
    js_server: NatsServer, replicas: ReplicaSet, prefix: str
) -> None:
    async with jsm(js_server.url) as manager:
        await manager.add_stream(
            name=stream_name(prefix), subjects=[f"elsewhere.{prefix}.>"], max_msgs_per_subject=1
        )
        a = replicas.add("a", js_values(js_server.url, prefix))
        a.launch()
        answer = await wait_unhealthy(a)
        message = answer.message or ""
        assert stream_name(prefix) in message and f"lc.{prefix}.>" in message, message
        await wait_log(a, stream_name(prefix))
        assert a.is_running()
        await a.client.set("k", "v")
        assert await value(a, "k") == "v"
        assert a.is_running()
        # Nothing was changed in, or written to, the operator's stream.
        info = await manager.stream_info(stream_name(prefix))
        assert info.config.subjects == [f"elsewhere.{prefix}.>"]
        assert info.state.messages == 0
    assert "Traceback" not in a.log_text()
