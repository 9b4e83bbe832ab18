"""Attacks on the replication channel, sent over a real nats-server to real provider processes.

Each attack comes from a client with a plain connection to the replication server: an
*outsider* (unsigned, or signed with a key outside ``cluster_issuers``) and, where it applies, a
*trusted signer* holding the lattice's cluster key (defence in depth: validation still holds).
Every test ends the same way: the actor's data is unchanged, replication still works in both
directions, health is true and memory stayed bounded.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nats.aio.client import Client as NATS

from contract.nkeys import KeyPair
from provider.replication import messages as m
from provider.replication.messages import Kind, Message
from provider.replication.signing import (
    HEADER_BYTES,
    MAC_HEADER_BYTES,
    MAC_MAGIC,
    SIGNER_BYTES,
    TAG_MAGIC,
    Trust,
    seal,
    seal_for,
    seal_tagged,
)
from provider.store import BUCKETS, Change
from provider.store.codec import encode_change, new_node_id
from provider.store.entry import Entry
from provider.store.entry import Kind as EntryKind
from provider.store.hlc import LOGICAL_BITS, wall_ms
from tests.harness.replicas import Replica, ReplicaSet, envelope_body, wait_converged
from tests.integration.test_introspection import statuses_by_lattice
from wasmbus_testkit import FaultProxy, NatsServer, flush_in_order

PERIOD = 1.0
#: Growth of a provider's resident memory an attack may cause (the flood tests send megabytes).
MEMORY_SLACK_KB = 40 * 1024


def repl_values(url: str, tag: str, **extra: str) -> dict[str, str]:
    return {
        "NATS_URL": url,
        "STATE_REPL_SUBJECT": f"atk.{tag}.events",
        "REPLAY_REQ_SUBJECT": f"atk.{tag}.replay",
        "REPLAY_HEARTBEAT_SECS": str(PERIOD),
        **extra,
    }


@pytest.fixture
async def intruder(nats_server: NatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_server.url, name="intruder")
    yield nc
    await nc.close()


class Pair:
    """Two replicas of one lattice, their subjects, and what an attacker needs to know."""

    def __init__(self, replicas: ReplicaSet, a: Replica, b: Replica, values: dict[str, str]):
        self.replicas, self.a, self.b = replicas, a, b
        self.events = values["STATE_REPL_SUBJECT"]
        self.replay = values["REPLAY_REQ_SUBJECT"]
        self.insider = Trust.from_host(replicas.cluster.seed, [replicas.cluster.public_key])
        outsider_key = KeyPair.generate("cluster")
        self.outsider = Trust.from_host(outsider_key.seed, [outsider_key.public_key])
        self.node_a = ""

    def direct(self, node: str) -> str:
        return f"{self.replay}.node.{node}"

    async def learn_node_of_a(self, nc: NATS) -> str:
        """A's node id, read from its own (signed, not secret) traffic."""
        sub = await nc.subscribe(self.events)
        await flush_in_order(nc)
        await self.a.client.set("__probe__", uuid.uuid4().hex)
        sealed = (await sub.next_msg(timeout=5)).data
        await sub.unsubscribe()
        self.node_a = msgpack.unpackb(envelope_body(sealed), raw=False)["n"]
        return self.node_a

    async def assert_still_sound(self, expected: dict[str, str | None], rss_before: dict) -> None:
        """Data as expected on both, replication working both ways, healthy, memory bounded."""
        a, b = self.a, self.b
        for key, value in expected.items():
            for replica in (a, b):
                answer = await replica.client.get(key)
                got = answer.value if answer.exists else None
                assert got == value, f"{replica.name}: {key} = {got!r}, expected {value!r}"
        tag = uuid.uuid4().hex[:6]
        await a.client.set(f"after-a-{tag}", "1")
        await b.client.set(f"after-b-{tag}", "2")
        for replica in (a, b):
            assert (await replica.client.get(f"after-a-{tag}")).value == "1"
            assert (await replica.client.get(f"after-b-{tag}")).value == "2"
        for replica in (a, b):
            assert replica.is_running()
            health = await replica.health()
            assert health.healthy, f"{replica.name}: {health}"
            growth = rss_kb(replica) - rss_before[replica.name]
            assert growth < MEMORY_SLACK_KB, f"{replica.name} grew by {growth} KB"


def rss_kb(replica: Replica) -> int:
    with open(f"/proc/{replica.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture
async def pair(replicas: ReplicaSet, intruder: NATS) -> Pair:
    values = repl_values(replicas.lattice_url, uuid.uuid4().hex[:8])
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)
    pair = Pair(replicas, a, b, values)
    await pair.a.client.set("owned", "by-the-actor")
    await wait_converged(lambda: _has(pair.b, "owned", "by-the-actor"))
    await pair.learn_node_of_a(intruder)
    return pair


async def _has(replica: Replica, key: str, value: str) -> None:
    assert (await replica.client.get(key)).value == value


def rss_of(pair: Pair) -> dict[str, int]:
    return {r.name: rss_kb(r) for r in (pair.a, pair.b)}


def change_batch(node: str, entries: list[list[Any]], seq: int = 1) -> bytes:
    """A change-batch body carrying raw (possibly hostile) change records."""
    packed = b"".join(msgpack.packb(record, use_bin_type=True) for record in entries)
    body = {"f": m.FORMAT, "t": "ch", "n": node, "s": seq, "c": packed, "w": wall_ms()}
    return msgpack.packb(body, use_bin_type=True)


def string_record(key: str, value: str, stamp: int, gen: int = 0, **extra: Any) -> list[Any]:
    record = encode_change(Change(key, Entry((stamp, new_node_id(), gen), EntryKind.STRING, value)))
    if "deadline" in extra:
        record[5] = extra["deadline"]
    if "counts" in extra:
        record[7] = extra["counts"]
    return record


def _with_origin(record: list[Any], origin: str) -> list[Any]:
    record[2] = origin
    return record


def now_stamp(offset_ms: int = 0) -> int:
    return (wall_ms() + offset_ms) << LOGICAL_BITS


# ------------------------------------------------------------------ who may speak at all
async def test_unsigned_and_foreign_signed_batches_change_nothing(
    pair: Pair, intruder: NATS
) -> None:
    before = rss_of(pair)
    forged = change_batch(new_node_id(), [string_record("owned", "hacked", now_stamp())])
    await intruder.publish(pair.events, forged)  # unsigned
    await intruder.publish(pair.events, seal(pair.outsider, forged))  # signed, not trusted
    await intruder.publish(pair.direct(pair.node_a), seal(pair.outsider, forged))
    await intruder.flush()
    await asyncio.sleep(0.5)
    await pair.assert_still_sound({"owned": "by-the-actor"}, before)


async def test_forged_and_moved_tagged_batches_change_nothing(pair: Pair, intruder: NATS) -> None:
    """Live batches travel tagged (a pair MAC per trusted key): tags an outsider made, tags
    renamed to a trusted sender, and a trusted batch captured on another cache's subject are
    all dropped, while a batch the lattice tagged for this subject is applied."""
    before = rss_of(pair)
    forged = change_batch(new_node_id(), [string_record("owned", "hacked", now_stamp())])
    outsider = Trust.from_host(
        pair.outsider.signer.seed,
        [pair.outsider.signer.public_key, pair.replicas.cluster.public_key],
    )
    own_tags = seal_tagged(outsider, forged, pair.events)
    assert own_tags.startswith(TAG_MAGIC)
    renamed = TAG_MAGIC + pair.insider.raw_signer + own_tags[len(TAG_MAGIC) + SIGNER_BYTES :]
    moved = seal_tagged(pair.insider, forged, "atk.another-cache.events")
    for data in (own_tags, renamed, moved):
        await intruder.publish(pair.events, data)
    await intruder.flush()
    await asyncio.sleep(0.5)
    await pair.assert_still_sound({"owned": "by-the-actor"}, before)
    for replica in (pair.a, pair.b):
        assert (await counters(pair.replicas, replica))["untrusted_messages"] >= 3, replica.name
    genuine = change_batch(new_node_id(), [string_record("tagged", "by-the-lattice", now_stamp())])
    await intruder.publish(pair.events, seal_tagged(pair.insider, genuine, pair.events))
    await wait_converged(lambda: _has(pair.a, "tagged", "by-the-lattice"))
    await wait_converged(lambda: _has(pair.b, "tagged", "by-the-lattice"))


async def test_outsiders_get_no_snapshot_and_no_repair(pair: Pair, intruder: NATS) -> None:
    before = rss_of(pair)
    hello = m.encode(Message(Kind.SNAPSHOT_HELLO, new_node_id()))
    pull = m.encode(Message(Kind.SNAPSHOT_PULL, new_node_id(), buckets=[0], offset=0))
    for body in (hello, seal(pair.outsider, hello)):
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await intruder.request(pair.replay, body, timeout=0.5)
    for body in (pull, seal(pair.outsider, pull)):
        with pytest.raises(nats.errors.TimeoutError):
            await intruder.request(pair.direct(pair.node_a), body, timeout=0.5)
    await pair.assert_still_sound({"owned": "by-the-actor"}, before)


async def test_a_captured_pull_replayed_to_another_inbox_is_not_answered(
    pair: Pair, intruder: NATS
) -> None:
    """Even a validly signed pull (as if captured on the wire) answers only its own inbox."""
    pull = m.encode(Message(Kind.SNAPSHOT_PULL, new_node_id(), buckets=[0], offset=0))
    captured = seal(pair.insider, pull, "_INBOX.someone-else.1")
    with pytest.raises(nats.errors.TimeoutError):
        await intruder.request(pair.direct(pair.node_a), captured, timeout=0.5)
    # The same pull, bound to the inbox it is sent with, is answered: the trust root works.
    inbox = intruder.new_inbox()
    sub = await intruder.subscribe(inbox)
    await intruder.publish(pair.direct(pair.node_a), seal(pair.insider, pull, inbox), reply=inbox)
    answer = await sub.next_msg(timeout=2)
    assert answer.data.startswith(b"\xc1kv")


# ------------------------------------------------------------------ what a trusted signer sends
HOSTILE_RECORDS = {
    "stamp 2^64-1": lambda: string_record("owned", "frozen", 2**64 - 1),
    "generation 2^64-1": lambda: string_record("owned", "x", now_stamp(), gen=2**64 - 1),
    "counter 2^64-1": lambda: string_record(
        "owned", "0", now_stamp(), counts={new_node_id(): [2**64 - 1, 1]}
    ),
    "expired with max generation": lambda: string_record(
        "owned", "x", now_stamp(), gen=2**64 - 1, deadline=1
    ),
    "long node id": lambda: _with_origin(string_record("owned", "x", now_stamp()), "n" * 5000),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_RECORDS))
async def test_out_of_range_records_from_a_trusted_signer_are_dropped_whole(
    pair: Pair, intruder: NATS, name: str
) -> None:
    before = rss_of(pair)
    # The hostile record rides with a harmless one: the whole message is dropped.
    records = [string_record("innocent", "x", now_stamp()), HOSTILE_RECORDS[name]()]
    await intruder.publish(pair.events, seal(pair.insider, change_batch(new_node_id(), records)))
    await intruder.flush()
    await asyncio.sleep(1.5)  # a sweep tick and an anti-entropy period pass
    await pair.a.client.set("owned", "later")
    await pair.a.client.delete("owned")
    await pair.b.client.set("owned", "latest")
    await pair.assert_still_sound({"owned": "latest", "innocent": None}, before)


async def test_a_digest_with_a_5000_character_node_id_is_dropped(
    pair: Pair, intruder: NATS
) -> None:
    before = rss_of(pair)
    body = {"f": m.FORMAT, "t": "dg", "n": "n" * 5000, "s": 0, "d": bytes(8 * BUCKETS)}
    await intruder.publish(
        f"{pair.events}.digest", seal(pair.insider, msgpack.packb(body, use_bin_type=True))
    )
    await intruder.flush()
    await asyncio.sleep(2 * PERIOD)  # an anti-entropy round would have built the subject
    await pair.assert_still_sound({"owned": "by-the-actor"}, before)


async def test_a_fast_clock_is_refused_and_both_sides_say_so(pair: Pair, intruder: NATS) -> None:
    before = rss_of(pair)
    skewed = new_node_id()
    notices = await intruder.subscribe(pair.direct(skewed))
    record = string_record("owned", "from-the-future", now_stamp(120_000))
    await intruder.publish(pair.events, seal(pair.insider, change_batch(skewed, [record])))
    await intruder.flush()
    # The receivers tell the skewed peer, signed, how far ahead it is.
    notice = await notices.next_msg(timeout=3)
    told = m.decode(notice.data[HEADER_BYTES:])
    assert told.type == Kind.CLOCK_REFUSED and told.ahead_ms >= 119_000
    health = await pair.a.health()
    assert health.healthy and skewed in (health.message or ""), health
    # A later acknowledged write is not lost to the refused stamp.
    await pair.a.client.set("owned", "acknowledged")
    await asyncio.sleep(2 * PERIOD)
    await pair.assert_still_sound({"owned": "acknowledged"}, before)


async def test_an_instance_told_its_clock_is_refused_reports_itself_unhealthy(
    pair: Pair, intruder: NATS
) -> None:
    notice = m.encode(Message(Kind.CLOCK_REFUSED, new_node_id(), ahead_ms=120_000))
    # An outsider cannot make it report so: its notice is dropped unread.
    await intruder.publish(pair.direct(pair.node_a), seal(pair.outsider, notice))
    await intruder.flush()
    await asyncio.sleep(0.3)
    assert (await pair.a.health()).healthy
    await intruder.publish(pair.direct(pair.node_a), seal(pair.insider, notice))
    await intruder.flush()

    async def unhealthy() -> None:
        health = await pair.a.health()
        assert not health.healthy and "clock" in (health.message or ""), health

    await wait_converged(unhealthy, timeout=3)


async def test_a_quadratic_causal_context_does_not_stall_the_event_loop(
    pair: Pair, intruder: NATS
) -> None:
    """25,000 out-of-order dots in one set's context: merged in O(n log n), health answers."""
    before = rss_of(pair)
    node = new_node_id()
    cloud = [[node, n] for n in range(50_000, 0, -2)]  # every other dot, descending
    record = ["big-set", now_stamp(), node, 0, int(EntryKind.SET), 0, [{}, {}, cloud], None]
    body = change_batch(new_node_id(), [record])
    assert len(body) > 100_000
    started = time.monotonic()
    await intruder.publish(pair.events, seal(pair.insider, body))
    await intruder.flush()
    for replica in (pair.a, pair.b):
        health = await replica.health(timeout=2.0)
        assert health.healthy
    assert time.monotonic() - started < 2.0
    await pair.assert_still_sound({"owned": "by-the-actor"}, before)


async def test_fresh_node_ids_do_not_grow_memory_without_bound(pair: Pair, intruder: NATS) -> None:
    before = rss_of(pair)
    for i in range(5000):
        batch = change_batch(new_node_id(), [string_record(f"flood-{i % 10}", "x", now_stamp())])
        await intruder.publish(pair.events, seal(pair.insider, batch))
    await intruder.flush()
    await asyncio.sleep(1.0)
    await pair.assert_still_sound({"owned": "by-the-actor"}, before)


# ------------------------------------------------------------------ a peer that stalls replay
async def test_endless_empty_snapshot_chunks_do_not_hold_a_new_instance_in_replay(
    replicas: ReplicaSet, intruder: NATS
) -> None:
    """A trusted but broken 'peer' offers a snapshot and then answers every pull with an empty,
    non-final chunk. The new instance gives up on it and finishes starting."""
    values = repl_values(replicas.lattice_url, uuid.uuid4().hex[:8])
    trust = Trust.from_host(replicas.cluster.seed, [replicas.cluster.public_key])
    fake = new_node_id()

    async def offer(msg: Any) -> None:
        body = m.encode(Message(Kind.SNAPSHOT_OFFER, fake, keys=10))
        await intruder.publish(msg.reply, seal(trust, body))

    async def empty_chunk(msg: Any) -> None:
        chunk = m.encode(Message(Kind.SNAPSHOT_CHUNK, fake, buckets=[0], offset=0, end=False))
        await intruder.publish(msg.reply, seal(trust, chunk))

    await intruder.subscribe(values["REPLAY_REQ_SUBJECT"], cb=offer)
    await intruder.subscribe(f"{values['REPLAY_REQ_SUBJECT']}.node.{fake}", cb=empty_chunk)
    await intruder.flush()
    joiner = replicas.add("joiner", values)
    started = time.monotonic()
    await replicas.start(joiner)

    async def replayed() -> None:
        health = await joiner.health()
        assert health.healthy and "replaying" not in (health.message or ""), health

    await wait_converged(replayed, timeout=10)
    assert time.monotonic() - started < 10
    assert "snapshot replay abandoned" in joiner.log_text()
    await joiner.client.set("works", "yes")
    assert (await joiner.client.get("works")).value == "yes"


# ------------------------------------------------------------------ a connection closed for good
async def _has_value(replica: Replica, key: str, value: str) -> None:
    answer = await replica.client.get(key)
    assert answer.exists and answer.value == value, (replica.name, key, answer)


async def fatal_close_and_recover(
    replicas: ReplicaSet,
    workdir: Path,
    values_for: Callable[[str], dict[str, str]],
    rebuilt_log: str,
    *,
    big_write_fails: type[Exception] | None = None,
) -> None:
    """Make the replication server close A's connection in a way nats-py treats as fatal, then
    prove that A rebuilds it and replicates both ways again.

    The operator lowers ``max_payload`` on a running server (a config reload). A's client still
    believes the old limit, so its next large message is a protocol violation: the server
    closes the connection and nats-py ends in CLOSED instead of reconnecting. The lattice (RPC)
    traffic runs on another server, so only replication is hit. Shared by both modes.
    """
    server = NatsServer(workdir / "replication-nats", jetstream=True)
    server.start()
    try:
        values = values_for(server.url)
        a, b = await replicas.start(replicas.add("a", values), replicas.add("b", values))
        await a.client.set("before", "1")
        await wait_converged(lambda: _has_value(b, "before", "1"))

        server.extra_config = f"max_payload: {64 * 1024}"
        server.write_config()
        os.kill(server.pid, signal.SIGHUP)
        await wait_converged(lambda: server.http_json("/varz")["max_payload"] == 64 * 1024)
        big = "x" * (200 * 1024)
        if big_write_fails is None:
            await a.client.set("big", big)
        else:
            with pytest.raises(big_write_fails):
                await a.client.set("big", big)

        await wait_converged(lambda: rebuilt_log in a.log_text(), message="a rebuilt connection")

        async def healthy() -> bool:  # notes (a lagging peer, say) may remain: not a failure
            return (await a.health()).healthy

        await wait_converged(healthy, message="a healthy again")
        await a.client.set("after-a", "2")
        await b.client.set("after-b", "3")
        for replica in (a, b):
            await wait_converged(lambda r=replica: _has_value(r, "after-a", "2"))
            await wait_converged(lambda r=replica: _has_value(r, "after-b", "3"))
            health = await replica.health()
            assert health.healthy, f"{replica.name}: {health}"
    finally:
        server.kill()


async def test_a_fatal_close_of_the_replication_connection_is_rebuilt(
    replicas: ReplicaSet, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    await fatal_close_and_recover(
        replicas,
        tmp_path,
        lambda url: repl_values(url, tag),
        "replication connection closed for good; rebuilding it",
    )


# ------------------------------------------------------------------ forged write acks
ACK_BOUND_MS = 800


def _forged_acks(insider: Trust, writer_key: bytes, subject: str, body: bytes) -> dict[str, bytes]:
    """Every way an outsider may try to confirm a write in the peer's name, on ``subject``."""
    outsider_key = KeyPair.generate("server")
    # The outsider trusts the writer's (public) key, so it can do the DH with its own key.
    outsider = Trust.from_host(
        outsider_key.seed, [outsider_key.public_key, insider.trusted_keys[0]]
    )
    own_mac = seal_for(outsider, writer_key, body, subject)
    mac_of_own = own_mac[len(MAC_MAGIC) + SIGNER_BYTES : MAC_HEADER_BYTES]
    claimed = insider.raw_signer  # the trusted key the outsider would like to speak for
    return {
        "unsigned": body,
        "signed with its own key": seal(outsider, body),
        "MAC with its own key": own_mac,
        "MAC with its own key, naming the trusted sender": MAC_MAGIC + claimed + mac_of_own + body,
        "MAC with no key": MAC_MAGIC
        + claimed
        + hashlib.blake2b(body, digest_size=32).digest()
        + body,
        "zero MAC": MAC_MAGIC + claimed + bytes(32) + body,
        "trusted MAC captured on another ack subject": seal_for(
            insider, writer_key, body, subject + "x"
        ),
    }


@pytest.mark.parametrize("mode", ["nats", "jetstream"])
async def test_forged_acks_do_not_release_a_write_before_its_bound(
    replicas: ReplicaSet, fault_proxy: FaultProxy, intruder: NATS, mode: str
) -> None:
    """The peer is partitioned; an outsider floods the writer's ack subject with acks in the
    peer's name (unsigned, signed or MACed with its own key, MACed with no key, a trusted MAC
    moved from another subject). The write still waits the whole WRITE_ACK_TIMEOUT_MS and the
    peer is marked lagging. A control flood of acks MACed with the trusted key, on a fresh
    write, does release it at once: the forgeries were aimed right."""
    tag = uuid.uuid4().hex[:8]
    extra = {"REPLICATION": mode, "CACHE_PREFIX": f"atk-{tag}"}
    extra["WRITE_ACK_TIMEOUT_MS"] = str(ACK_BOUND_MS)
    peer = replicas.add("peer", repl_values(fault_proxy.url, tag, **extra))
    writer = replicas.add("writer", repl_values(replicas.lattice_url, tag, **extra))
    await replicas.start(peer, writer)
    await peer.client.set("hello-from-peer", "1")
    await writer.client.set("hello-from-writer", "1")
    await wait_converged(lambda: _has(writer, "hello-from-peer", "1"))
    await wait_converged(lambda: _has(peer, "hello-from-writer", "1"))
    await asyncio.sleep(1.5 * PERIOD)  # each has heard the other: they are peers
    docs = await statuses_by_lattice(replicas.nc, 2)
    # Node ids are in every (signed, not secret) replication message; read here for brevity.
    peer_node = docs[peer.lattice]["replication"]["node"]
    writer_node = docs[writer.lattice]["replication"]["node"]
    assert peer_node in docs[writer.lattice]["replication"]["peers"]
    if mode == "nats":
        subject = f"atk.{tag}.replay.node.{writer_node}"
    else:
        subject = f"kvcache.lc.atk-{tag}.ack.{writer_node}"
    # Batch numbers (plain mode) or stream sequences (JetStream: up to the largest) that
    # cover every write of this test.
    body = m.encode(Message(Kind.ACK, peer_node, acks=[*range(1, m.MAX_ACKS), 2**40]))
    insider = Trust.from_host(replicas.cluster.seed, [replicas.cluster.public_key])
    writer_key = insider.raw_signer  # the harness's hosts share the lattice's cluster key
    forged = _forged_acks(insider, writer_key, subject, body)
    fault_proxy.blackhole()

    async def timed_write(key: str, flood: list[bytes]) -> float:
        stop = asyncio.Event()

        async def keep_flooding() -> None:
            # Stopped by an event, not cancelled: nats-py's publish and flush may swallow a
            # cancellation, which left the flood running for ever.
            while not stop.is_set():
                for data in flood:
                    await intruder.publish(subject, data)
                await intruder.flush()
                await asyncio.sleep(0.005)

        flooding = asyncio.ensure_future(keep_flooding())
        try:
            await asyncio.sleep(0.05)  # the flood is under way before the write goes out
            started = time.monotonic()
            await writer.client.set(key, "v")
            return time.monotonic() - started
        finally:
            stop.set()
            await asyncio.wait_for(flooding, timeout=5)

    # Control: the trusted key's MAC, bound to this subject, is an ack the writer accepts.
    control = await timed_write("control", [seal_for(insider, writer_key, body, subject)])
    assert control < ACK_BOUND_MS / 1000 / 2, f"a trusted ack did not release it: {control:.3f}s"
    health = await writer.health()
    assert health.healthy and "lagging" not in (health.message or ""), health
    untrusted_before = (await counters(replicas, writer))["untrusted_messages"]

    elapsed = await timed_write("forged", list(forged.values()))
    assert elapsed >= ACK_BOUND_MS / 1000 - 0.01, f"a forged ack released it after {elapsed:.3f}s"
    assert elapsed < ACK_BOUND_MS / 1000 + 1.0, f"the bound did not hold: {elapsed:.3f}s"
    health = await writer.health()
    assert (
        health.healthy
        and "lagging" in (health.message or "")
        and peer_node in (health.message or "")
    ), health
    status = await counters(replicas, writer)
    assert status["lagging_peers"] == [peer_node]
    assert status["untrusted_messages"] - untrusted_before >= len(forged)
    assert "replication message dropped" in writer.log_text()
    # Later writes do not wait for the lagging peer; the forgeries never changed any data.
    started = time.monotonic()
    await writer.client.set("after", "v")
    assert time.monotonic() - started < ACK_BOUND_MS / 1000 / 2
    fault_proxy.heal()
    await wait_converged(lambda: _has(peer, "forged", "v"), timeout=10)
    assert (await writer.client.get("forged")).value == "v"


async def counters(replicas: ReplicaSet, replica: Replica) -> dict[str, Any]:
    """``replica``'s replication section of its ``$SRV.STATS`` status document."""
    docs = await statuses_by_lattice(replicas.nc, sum(r.is_running() for r in replicas.replicas))
    return docs[replica.lattice]["replication"]
