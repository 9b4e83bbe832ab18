"""Snapshot chunks and repair sets, built from real stores and applied to others (no NATS)."""

from __future__ import annotations

from provider.replication import exchange
from provider.replication import messages as m
from provider.store import BUCKETS, Change, KeyValueStore
from provider.store.entry import canonical


def state(store: KeyValueStore) -> dict:
    return {key: canonical(entry) for key, entry in store.items()}


def filled(node: str, keys: range, value: str = "v") -> KeyValueStore:
    store = KeyValueStore(node)
    for i in keys:
        store.set(f"key:{i}", f"{value}{i}" * 20)
    return store


def test_snapshot_chunks_cover_everything_in_bounded_messages() -> None:
    source = filled("000000000000000a", range(20_000))
    source.list_add("list", "x")
    source.set_add("set", "m")
    joiner = KeyValueStore("000000000000000b")
    bucket, offset, chunks = 0, 0, 0
    while True:
        data = exchange.snapshot_chunk(source, "000000000000000a", bucket, offset)
        assert len(data) <= m.MAX_MESSAGE_BYTES
        chunk = m.decode(data)
        for change in chunk.changes:
            joiner.apply(change)
        chunks += 1
        if chunk.end:
            break
        bucket, offset = chunk.buckets[0], chunk.offset
    assert chunks > 1  # 20k keys of ~100 bytes do not fit one chunk
    assert state(joiner) == state(source)


def test_repair_exchange_makes_both_sides_equal_and_sends_only_what_differs() -> None:
    a, b = filled("000000000000000a", range(5000)), KeyValueStore("000000000000000b")
    for key, entry in a.items():  # b has everything a has ...
        b.apply(Change(key, entry))
    a.track_digests()
    b.track_digests()
    a.set("only-on-a", "1")  # ... but each side has one change the other lacks
    b.increment("only-on-b", 5)
    differing = [i for i in range(BUCKETS) if a.track_digests()[i] != b.track_digests()[i]]
    assert 1 <= len(differing) <= 2

    request = m.decode(exchange.repair_request(b, "000000000000000b", differing))
    reply_data, sent = exchange.repair_reply(a, "000000000000000a", request)
    reply = m.decode(reply_data)
    assert sent <= 2 and set(reply.buckets) == set(differing)
    for change in reply.changes:
        b.apply(change)
    for body, _count in exchange.repair_pushes(b, "000000000000000b", reply.subs):
        for change in m.decode(body).changes:
            a.apply(change)
    assert state(a) == state(b)
    assert a.get("only-on-b") == "5" and b.get("only-on-a") == "1"


def test_replies_and_chunks_stay_under_a_lower_server_max_payload() -> None:
    """A server run with a small ``max_payload``: an entry too large for it is left out of
    repair replies, pushes and snapshot chunks, and everything else still travels, so one big
    entry cannot stall the repair of its neighbours (or make the server close the link)."""
    from provider.replication import exchange
    from provider.replication import messages as m
    from provider.store import KeyValueStore
    from provider.store.codec import new_node_id

    limit = m.message_limit(64 * 1024)
    store = KeyValueStore(new_node_id())
    store.set("big", "x" * (200 * 1024))
    for i in range(50):
        store.set(f"small{i}", "y" * 100)
    empty = KeyValueStore(new_node_id())
    from provider.store import BUCKETS

    request = m.decode(exchange.repair_request(empty, empty.node_id, list(range(BUCKETS))[:64]))
    body, count = exchange.repair_reply(store, store.node_id, request, max_bytes=limit)
    assert len(body) <= limit and count > 0
    pushed = [
        body
        for body, _ in exchange.repair_pushes(
            store, store.node_id, list(range(BUCKETS * 64)), max_bytes=limit
        )
    ]
    assert pushed and all(len(body) <= limit for body in pushed)
    bucket, offset, keys = 0, 0, 0
    while True:
        chunk = m.decode(
            exchange.snapshot_chunk(store, store.node_id, bucket, offset, max_bytes=limit)
        )
        keys += len(chunk.changes)
        if chunk.end:
            break
        bucket, offset = chunk.buckets[0], chunk.offset
    assert keys == 50  # every small entry, never the big one
    assert m.message_limit(None) == m.MAX_MESSAGE_BYTES
