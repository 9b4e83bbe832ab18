"""What replicas send each other to catch up: snapshot chunks and repair sets. Pure.

These functions read a store and build (or consume) bounded replication messages; they do no
I/O, so :mod:`.natsrepl` stays a thin layer of subscriptions and requests around them, and the
size bounds and cursor logic can be tested without NATS.
"""

from __future__ import annotations

from provider.store import BUCKETS, SUB_BUCKETS, Change, KeyValueStore

from . import messages as m


def snapshot_chunk(
    store: KeyValueStore,
    node: str,
    bucket: int,
    offset: int,
    *,
    max_bytes: int = m.MAX_MESSAGE_BYTES,
) -> bytes:
    """The next snapshot chunk from cursor ``(bucket, offset)``, cut at the chunk target size.

    The reply names the cursor to pull next, or says it is the end. An entry too large for any
    message of ``max_bytes`` is skipped (it cannot travel at all).
    """
    batch = m.Batch(max_bytes=max_bytes)
    while bucket < BUCKETS:
        items = store.bucket_items(bucket)
        while offset < len(items):
            key, entry = items[offset]
            packed = m.pack_change(Change(key, entry))
            if not batch.fits(packed):
                if batch.count:
                    return _chunk(batch, node, bucket, offset, end=False)
                offset += 1
                continue
            batch.add(packed)
            offset += 1
        bucket, offset = bucket + 1, 0
    return _chunk(batch, node, BUCKETS, 0, end=True)


def _chunk(batch: m.Batch, node: str, bucket: int, offset: int, *, end: bool) -> bytes:
    message = m.Message(m.Kind.SNAPSHOT_CHUNK, node, buckets=[bucket], offset=offset, end=end)
    return m.encode(message, batch.take())


def repair_request(store: KeyValueStore, node: str, buckets: list[int]) -> bytes:
    """Ask a peer about ``buckets``: our non-zero sub-bucket digests of each."""
    sparse = [{sub: d for sub, d in enumerate(store.sub_digests(b)) if d} for b in buckets]
    return m.encode(m.Message(m.Kind.REPAIR_REQUEST, node, buckets=buckets, sub_digests=sparse))


def repair_reply(
    store: KeyValueStore, node: str, request: m.Message, *, max_bytes: int = m.MAX_MESSAGE_BYTES
) -> tuple[bytes, int]:
    """Answer a repair request: our entries of the sub-buckets whose digests differ.

    Returns the encoded reply and how many entries it carries. Whole buckets only, up to the
    chunk target; the asker requests the uncovered buckets again. Entries that would take the
    reply over ``max_bytes`` are left out, so one entry too large for the connection cannot
    stall the repair of everything else.
    """
    batch = m.Batch(max_bytes=max_bytes)
    covered: list[int] = []
    subs: list[int] = []
    for index, theirs in zip(request.buckets, request.sub_digests, strict=True):
        mine = store.sub_digests(index)
        differing = {sub for sub in range(SUB_BUCKETS) if theirs.get(sub, 0) != mine[sub]}
        parts = [m.pack_change(Change(k, e)) for k, e in store.sub_bucket_items(index, differing)]
        if covered and batch.size + sum(map(len, parts)) > batch.limit:
            break
        covered.append(index)
        subs.extend(index * SUB_BUCKETS + sub for sub in sorted(differing))
        for part in parts:
            if batch.size + len(part) <= max_bytes - 4096:
                batch.add(part)
    count = batch.count
    reply = m.Message(m.Kind.REPAIR_REPLY, node, buckets=covered, subs=subs)
    return m.encode(reply, batch.take()), count


def repair_pushes(
    store: KeyValueStore, node: str, subs: list[int], *, max_bytes: int = m.MAX_MESSAGE_BYTES
) -> list[tuple[bytes, int]]:
    """Our entries of the named sub-buckets (``bucket * SUB_BUCKETS + sub``), as bounded push
    messages with their entry counts."""
    wanted: dict[int, set[int]] = {}
    for sub in subs:
        wanted.setdefault(sub // SUB_BUCKETS, set()).add(sub % SUB_BUCKETS)
    pushes: list[tuple[bytes, int]] = []
    batch = m.Batch(max_bytes=max_bytes)

    def flush() -> None:
        if batch.count:
            count = batch.count
            pushes.append((m.encode(m.Message(m.Kind.REPAIR_PUSH, node), batch.take()), count))

    for index, sub_set in wanted.items():
        for key, entry in store.sub_bucket_items(index, sub_set):
            packed = m.pack_change(Change(key, entry))
            if not batch.fits(packed):
                flush()
                if not batch.fits(packed):
                    continue  # a single entry over the limit cannot travel
            batch.add(packed)
    flush()
    return pushes
