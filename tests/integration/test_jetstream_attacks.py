"""Attacks on JetStream-mode replication, against a real nats-server and real provider processes.

In JetStream mode the stream *is* the replication channel: whoever may publish on
``lc.{prefix}.>`` can put a record there, and every instance (and every instance started later,
replaying the stream) reads it. So the attacks go straight onto the stream, from an *outsider*
(unsigned, or signed by a key outside ``cluster_issuers``) and from a *trusted signer* (the
lattice's cluster key: validation and the clock bound must hold even then). A real fast clock
is faked in one provider process only (``time.time`` shifted by a ``sitecustomize`` module),
so the whole path of the clock notice runs for real: stamp, record, refusal, ``ck`` notice,
health on both sides.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nats.js.client import JetStreamContext

from contract.client import KeyValueError
from contract.nkeys import KeyPair
from provider.replication import messages as m
from provider.replication.clockguard import CLOCK_NOTICE_INTERVAL
from provider.replication.jetstream import (
    FORMAT,
    decode_record_and_writer,
    encode_record,
    key_token,
)
from provider.replication.messages import Kind
from provider.replication.signing import HEADER_BYTES, Trust, seal
from provider.store.codec import decode_change, new_node_id
from provider.store.entry import Kind as EntryKind
from tests.harness.replicas import Replica, ReplicaSet, envelope_body, wait_converged
from tests.integration import test_replication_attacks as plain
from tests.integration.test_introspection import statuses_by_lattice
from tests.integration.test_jetstream import js_values, stream_name, value
from tests.integration.test_replication_attacks import (
    MEMORY_SLACK_KB,
    fatal_close_and_recover,
    now_stamp,
    rss_kb,
    string_record,
)
from wasmbus_testkit import NatsServer, ProviderProcess, flush_in_order

#: How fast the skewed instance's clock runs: far beyond MAX_CLOCK_OFFSET_MS (500 ms).
FAST_BY_SECS = 30
#: The plain-mode attack tests' outsider connection to the (one) nats-server, as a fixture here.
intruder = plain.intruder
#: A running instance must answer health within this while a hostile record is processed.
HEALTH_LATENCY_SECS = 0.1


class Stream:
    """One lattice's cache stream, and what an attacker on it needs."""

    def __init__(self, replicas: ReplicaSet, prefix: str, js: JetStreamContext) -> None:
        self.replicas = replicas
        self.prefix = prefix
        self.js = js
        self.insider = Trust.from_host(replicas.cluster.seed, [replicas.cluster.public_key])
        outsider_key = KeyPair.generate("cluster")
        self.outsider = Trust.from_host(outsider_key.seed, [outsider_key.public_key])

    def subject(self, key: str) -> str:
        return f"lc.{self.prefix}.{key_token(key)}"

    async def put(self, key: str, body: bytes) -> int:
        """Publish ``body`` as the stream's record for ``key`` (no concurrency check): the
        server stores it, as it would for anyone allowed to publish there."""
        ack = await self.js.publish(self.subject(key), body, stream=stream_name(self.prefix))
        return ack.seq

    async def writer_of(self, key: str) -> str:
        """The node id a (trusted) record names as its writer: public, read off the stream."""
        raw = await self.js.get_last_msg(stream_name(self.prefix), self.subject(key))
        return decode_record_and_writer(raw.data[HEADER_BYTES:])[1]


@pytest.fixture
async def stream(replicas: ReplicaSet, intruder: nats.NATS) -> AsyncIterator[Stream]:
    yield Stream(replicas, "t" + uuid.uuid4().hex[:10], intruder.jetstream())


async def counters(replicas: ReplicaSet, replica: Replica) -> dict[str, Any]:
    """``replica``'s replication counters, from its ``$SRV.STATS`` status document."""
    expected = sum(r.is_running() for r in replicas.replicas)
    docs = await statuses_by_lattice(replicas.nc, expected)
    return docs[replica.lattice]["replication"]


async def assert_sound(replicas: list[Replica], expected: dict[str, str | None]) -> None:
    """Data as expected everywhere, a fresh write replicates to all, and all are healthy."""
    for replica in replicas:
        for key, wanted in expected.items():
            assert await value(replica, key) == wanted, f"{replica.name}: {key}"
    tag = uuid.uuid4().hex[:6]
    await replicas[0].client.set(f"after-{tag}", tag)
    for replica in replicas:
        await wait_converged(lambda r=replica: _has(r, f"after-{tag}", tag), timeout=5)
        health = await replica.health()
        assert health.healthy, f"{replica.name}: {health}"


async def _has(replica: Replica, key: str, wanted: str | None) -> None:
    assert await value(replica, key) == wanted


# ------------------------------------------------------------------ forged records
async def test_forged_records_on_the_stream_are_ignored_and_counted(
    replicas: ReplicaSet, nats_server: NatsServer, stream: Stream
) -> None:
    values = js_values(nats_server.url, stream.prefix)
    a, b = await replicas.start(replicas.add("a", values), replicas.add("b", values))
    await a.client.set("owned", "by-the-actor")
    await b.client.set("other", "kept")
    for replica in (a, b):
        await wait_converged(lambda r=replica: _has(r, "owned", "by-the-actor"))
        await wait_converged(lambda r=replica: _has(r, "other", "kept"))
    rss_before = {r.name: rss_kb(r) for r in (a, b)}
    untrusted_before = {r.name: (await counters(replicas, r))["untrusted_messages"] for r in (a, b)}

    # A record the instances would merge, if they trusted it: later stamp, valid shape.
    change = decode_change(string_record("owned", "hacked", now_stamp(1)))
    record = encode_record(change, new_node_id())

    async def both_counted(forgeries: int) -> None:
        for replica in (a, b):
            now = (await counters(replicas, replica))["untrusted_messages"]
            assert now - untrusted_before[replica.name] >= forgeries, (replica.name, now)

    # The stream keeps one record per subject: a second forgery on "owned" could replace the
    # first before a consumer saw it, so each is sent once the one before it was counted.
    await stream.put("owned", record)  # unsigned
    await wait_converged(lambda: both_counted(1), timeout=5)
    await stream.put("owned", seal(stream.outsider, record, stream.subject("owned")))
    await wait_converged(lambda: both_counted(2), timeout=5)
    await stream.put("other", seal(stream.outsider, record, stream.subject("other")))
    await wait_converged(lambda: both_counted(3), timeout=5)
    for replica in (a, b):
        assert await value(replica, "owned") == "by-the-actor"
        assert await value(replica, "other") == "kept"

    # A fresh instance replays the stream, whose last records are the forgeries: it ignores
    # them too (it simply has no trusted copy of those keys until the next trusted write).
    c = await replicas.add("c", values).start()
    assert await value(c, "owned") is None
    assert await value(c, "other") is None
    assert (await counters(replicas, c))["untrusted_messages"] >= 2

    # The forgeries do not wedge the keys: the next trusted writes replace them everywhere.
    await a.client.set("owned", "rewritten")
    await b.client.set("other", "rewritten")
    await assert_sound([a, b, c], {"owned": "rewritten", "other": "rewritten"})
    for replica in (a, b):
        growth = rss_kb(replica) - rss_before[replica.name]
        assert growth < MEMORY_SLACK_KB, f"{replica.name} grew by {growth} KB"


# ------------------------------------------------------------------ quadratic record
def quadratic_record(stream: Stream, key: str) -> bytes:
    """A trusted record whose set carries 25,000 out-of-order causal-context dots."""
    node = new_node_id()
    cloud = [[node, n] for n in range(50_000, 0, -2)]  # every other dot, descending
    change = [key, now_stamp(), node, 0, int(EntryKind.SET), 0, [{}, {}, cloud], None]
    body = msgpack.packb([FORMAT, change, new_node_id()], use_bin_type=True)
    assert len(body) > 100_000
    return seal(stream.insider, body, stream.subject(key))


async def health_latencies(replica: Replica, seconds: float) -> list[float]:
    """Round-trip times of health requests sent back to back for ``seconds``."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        answer = await replica.health(timeout=2.0)
        latencies.append(time.monotonic() - started)
        assert answer.healthy, answer
    return latencies


async def test_a_quadratic_record_does_not_stall_running_or_starting_instances(
    replicas: ReplicaSet, nats_server: NatsServer, stream: Stream
) -> None:
    values = js_values(nats_server.url, stream.prefix)
    a, b = await replicas.start(replicas.add("a", values), replicas.add("b", values))
    await a.client.set("owned", "by-the-actor")
    await wait_converged(lambda: _has(b, "owned", "by-the-actor"))

    baseline = await health_latencies(a, 0.3)
    publish = asyncio.create_task(stream.put("big-set", quadratic_record(stream, "big-set")))
    during = await asyncio.gather(health_latencies(a, 1.0), health_latencies(b, 1.0))
    await publish
    for replica, latencies in zip((a, b), during, strict=True):
        # The median says the loop was free; the worst case allows one scheduling hiccup of
        # the shared test machine on top of the 100 ms bound.
        assert statistics.median(latencies) < HEALTH_LATENCY_SECS, (replica.name, latencies)
        assert max(latencies) < 2 * HEALTH_LATENCY_SECS + max(baseline), (
            replica.name,
            latencies,
        )

    # A starting instance replays the record with everything else, and is ready promptly.
    started = time.monotonic()
    c = await replicas.add("c", values).start()
    assert time.monotonic() - started < 5.0
    assert await value(c, "owned") == "by-the-actor"
    await assert_sound([a, b, c], {"owned": "by-the-actor"})


# ------------------------------------------------------------------ a fast clock
SITECUSTOMIZE = '''"""Test-only: this process's wall clock runs KVCACHE_TEST_FAST_BY_SECS ahead."""
import os
import time

_shift = float(os.environ["KVCACHE_TEST_FAST_BY_SECS"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _shift
time.time_ns = lambda: _time_ns() + int(_shift * 1e9)
'''


@pytest.fixture
async def skewable_replicas(
    nats_server: NatsServer,
    log_dir: Path,
    tmp_path: Path,
    provider_factory: Callable[..., ProviderProcess],
) -> AsyncIterator[ReplicaSet]:
    """Replicas whose instances named ``fast…`` run with a wall clock FAST_BY_SECS ahead."""
    hook = tmp_path / "fastclock"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fast_env = dict(os.environ)
    fast_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), fast_env.get("PYTHONPATH")]))
    fast_env["KVCACHE_TEST_FAST_BY_SECS"] = str(FAST_BY_SECS)

    def launch(stdin_line: bytes, cmd: list[str] | None = None, **kw: Any) -> ProviderProcess:
        if kw.get("name", "").startswith("fast"):
            kw["env"] = fast_env
        return provider_factory(stdin_line, cmd, **kw)

    async with ReplicaSet(nats_server.url, log_dir, launch) as replica_set:
        yield replica_set


async def test_a_fast_writer_is_refused_told_and_reports_itself_unhealthy(
    skewable_replicas: ReplicaSet, nats_server: NatsServer
) -> None:
    replicas = skewable_replicas
    prefix = "t" + uuid.uuid4().hex[:10]
    values = js_values(nats_server.url, prefix, WRITE_ACK="local")
    a, fast = await replicas.start(replicas.add("a", values), replicas.add("fast", values))
    await a.client.set("owned", "by-the-actor")
    await wait_converged(lambda: _has(fast, "owned", "by-the-actor"))

    await fast.client.set("owned", "from-the-future")
    async with await nats.connect(nats_server.url) as nc:
        js = nc.jetstream()
        raw = await js.get_last_msg(stream_name(prefix), f"lc.{prefix}.{key_token('owned')}")
        fast_node = decode_record_and_writer(raw.data[HEADER_BYTES:])[1]
    assert fast_node

    # The skewed writer learns from the signed notice that its writes go nowhere.
    async def fast_is_unhealthy() -> Any:
        health = await fast.health()
        assert not health.healthy, health
        assert "clock runs" in health.message and "fix time sync" in health.message, health
        return health

    told = await wait_converged(fast_is_unhealthy, timeout=5)
    assert f"MAX_CLOCK_OFFSET_MS={500}" in told.message
    # The receiver refused the record, counts it, stays healthy and names the offender.
    health = await a.health()
    assert health.healthy, health
    assert f"refusing changes from peer {fast_node}" in (health.message or ""), health
    assert (await counters(replicas, a))["clock_refused"] >= 1
    assert await value(a, "owned") == "by-the-actor"
    # Its own later writes never lose to the refused stamp.
    await a.client.set("owned", "acknowledged")
    await asyncio.sleep(0.5)
    assert await value(a, "owned") == "acknowledged"

    # More skewed writes in a burst are all refused but cost at most one notice per second,
    # and a later instance replaying the stream refuses the records as well (naming the writer).
    refused_before = (await counters(replicas, a))["clock_refused"]
    async with await nats.connect(nats_server.url) as nc:
        kinds: list[Kind] = []

        async def collect(msg: Any) -> None:
            kinds.append(m.decode(envelope_body(msg.data)).type)  # signed notices, MAC'd acks

        await nc.subscribe(f"kvcache.lc.{prefix}.ack.{fast_node}", cb=collect)
        await flush_in_order(nc)
        burst_started = time.monotonic()
        await asyncio.gather(*(fast.client.set(f"burst-{n}", "x") for n in range(20)))
        await wait_converged(
            lambda: _refused_at_least(replicas, a, refused_before + 20), message="20 refusals"
        )
        await asyncio.sleep(0.2)
        burst_secs = time.monotonic() - burst_started
    assert kinds.count(Kind.CLOCK_REFUSED) <= burst_secs / CLOCK_NOTICE_INTERVAL + 1, kinds
    late = await replicas.add("late", values).start(ready=False)
    await wait_converged(lambda: _names(late, fast_node), timeout=10)
    assert await value(late, "burst-0") is None
    assert a.log_text().count("refusing a peer's changes") == 1


async def _refused_at_least(replicas: ReplicaSet, replica: Replica, count: int) -> None:
    assert (await counters(replicas, replica))["clock_refused"] >= count


async def _names(replica: Replica, node: str) -> None:
    health = await replica.health(timeout=0.5)
    assert health.healthy and node in (health.message or ""), health


# ------------------------------------------------------------------ fatal close
async def test_a_fatal_close_of_the_jetstream_connection_is_rebuilt(
    replicas: ReplicaSet, tmp_path: Path
) -> None:
    """The server closes the connection with a protocol error, which nats-py treats as fatal
    (CLOSED, no reconnect): the instance builds a new connection and replicates again."""
    prefix = "t" + uuid.uuid4().hex[:10]
    await fatal_close_and_recover(
        replicas,
        tmp_path,
        lambda url: js_values(url, prefix),
        "jetstream connection closed for good; rebuilding it",
        big_write_fails=KeyValueError,
    )
