"""Replication messages on plain NATS: versioned, bounded, validated. Pure.

Every message is a msgpack map with ``f`` (format version, :data:`FORMAT`), ``t`` (type) and
``n`` (sender's node id). Receivers drop anything else (other versions, foreign publishers,
corrupt bytes) with a log line; nothing here raises anything but :class:`MessageError`.

======  ====================  ============================================================
``t``   name                  other fields
======  ====================  ============================================================
``ch``  change batch          ``s`` sender's batch sequence number, ``c`` changes,
                              ``w`` sender's wall clock (ms) at sending, for lag figures
``dg``  digest                ``s`` sender's last batch sequence, ``d`` bucket digests (bytes)
``rr``  repair request        ``b`` bucket ids, ``d`` per bucket the sender's non-zero
                              sub-bucket digests (``{sub: digest}``, so a small bucket is cheap)
``rp``  repair reply          ``b`` bucket ids covered, ``x`` differing sub-buckets
                              (``bucket * 64 + sub``), ``c`` the replier's changes for them
``pu``  repair push           ``c`` the requester's changes for those sub-buckets (no reply)
``sr``  snapshot hello        (none) — "who can give me a snapshot?"
``so``  snapshot offer        ``k`` key count
``sp``  snapshot pull         ``b`` bucket cursor, ``o`` offset inside the bucket
``sc``  snapshot chunk        ``c`` changes, ``b``/``o`` next cursor, ``e`` true at the end
======  ====================  ============================================================

``c`` is a bin holding the changes' msgpack encodings back to back: each change is packed once,
when it is measured against the size limit, and never re-packed into an outer array.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack

from provider.store import BUCKETS, SUB_BUCKETS, Change
from provider.store.codec import ChangeDecodeError, decode_change, encode_change

FORMAT = 1

#: Upper bound on any replication message we publish or accept. Under NATS' default 1 MiB
#: max_payload with room to spare; batches and chunks are cut to stay below it.
MAX_MESSAGE_BYTES = 900 * 1024

#: Target size of one snapshot chunk or repair message: small enough to interleave with live
#: traffic, large enough that per-message overhead is negligible.
CHUNK_TARGET_BYTES = 256 * 1024

_DIGESTS = struct.Struct(f"<{BUCKETS}Q")

#: Buckets named in one repair request (64 sub-digests each: 32 KiB at most).
MAX_REPAIR_BUCKETS = 64


class MessageError(ValueError):
    """A message that is not ours, not this version, or malformed."""


@dataclass(slots=True)
class Message:
    type: str
    node: str
    seq: int = 0
    changes: list[Change] = field(default_factory=list)
    digests: list[int] | None = None
    buckets: list[int] = field(default_factory=list)
    offset: int = 0
    keys: int = 0
    end: bool = False
    sent_ms: int = 0
    subs: list[int] = field(default_factory=list)
    sub_digests: list[dict[int, int]] = field(default_factory=list)


def pack_change(change: Change) -> bytes:
    return msgpack.packb(encode_change(change), use_bin_type=True)


def encode(message: Message, packed_changes: bytes | None = None) -> bytes:
    """Serialise; ``packed_changes`` (from :func:`pack_change`, concatenated) saves re-packing."""
    body: dict[str, Any] = {"f": FORMAT, "t": message.type, "n": message.node}
    t = message.type
    if t in ("ch", "rp", "pu", "sc"):
        body["c"] = (
            packed_changes
            if packed_changes is not None
            else b"".join(pack_change(c) for c in message.changes)
        )
    if t in ("ch", "dg"):
        body["s"] = message.seq
    if t == "ch":
        body["w"] = message.sent_ms
    if t == "dg":
        body["d"] = _DIGESTS.pack(*message.digests)
    if t in ("rr", "rp"):
        body["b"] = message.buckets
    if t == "rr":
        body["d"] = message.sub_digests
    if t == "rp":
        body["x"] = message.subs
    if t in ("sp", "sc"):
        body["b"] = message.buckets[0] if message.buckets else 0
        body["o"] = message.offset
    if t == "sc":
        body["e"] = message.end
    if t == "so":
        body["k"] = message.keys
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes) -> Message:
    if len(data) > MAX_MESSAGE_BYTES + 64 * 1024:
        raise MessageError(f"message of {len(data)} bytes is over the limit")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as error:
        raise MessageError(f"not msgpack: {error}") from None
    if not isinstance(body, dict):
        raise MessageError("not a map")
    if body.get("f") != FORMAT:
        raise MessageError(f"unsupported format {body.get('f')!r}")
    t, node = body.get("t"), body.get("n")
    if not isinstance(t, str) or not isinstance(node, str) or not node:
        raise MessageError("missing type or node")
    message = Message(t, node)
    try:
        if t in ("ch", "rp", "pu", "sc"):
            message.changes = unpack_changes(body["c"])
        if t in ("ch", "dg"):
            message.seq = _uint(body["s"])
        if t == "ch":
            message.sent_ms = _uint(body.get("w", 0))
        if t == "dg":
            digests = body["d"]
            if not isinstance(digests, bytes) or len(digests) != _DIGESTS.size:
                raise MessageError("digest vector has the wrong size")
            message.digests = list(_DIGESTS.unpack(digests))
        if t in ("rr", "rp"):
            buckets = body["b"]
            if not isinstance(buckets, list):
                raise MessageError("buckets is not a list")
            message.buckets = [_bucket(b) for b in buckets]
        if t == "rr":
            message.sub_digests = _sub_digest_maps(body["d"], len(message.buckets))
        if t == "rp":
            subs = body["x"]
            if not isinstance(subs, list):
                raise MessageError("sub-buckets is not a list")
            message.subs = [_sub(x) for x in subs]
        if t == "sc":
            if not isinstance(body["e"], bool):
                raise MessageError("end flag is not a boolean")
            message.end = body["e"]
        if t in ("sp", "sc"):
            message.buckets = [_bucket(body["b"]) if not message.end else 0]
            message.offset = _uint(body["o"])
        if t == "so":
            message.keys = _uint(body["k"])
        elif t not in ("ch", "dg", "rr", "rp", "pu", "sr", "sp", "sc"):
            raise MessageError(f"unknown message type {t!r}")
    except KeyError as missing:
        raise MessageError(f"{t} message without field {missing}") from None
    except ChangeDecodeError as error:
        raise MessageError(str(error)) from None
    return message


def _uint(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MessageError(f"expected a non-negative integer, got {value!r}")
    return value


def _sub_digest_maps(value: Any, buckets: int) -> list[dict[int, int]]:
    if buckets > MAX_REPAIR_BUCKETS:
        raise MessageError(
            f"{buckets} buckets in one repair request (at most {MAX_REPAIR_BUCKETS})"
        )
    if not isinstance(value, list) or len(value) != buckets:
        raise MessageError("sub-bucket digests do not match the buckets")
    for item in value:
        if not isinstance(item, dict):
            raise MessageError("sub-bucket digests are not a map")
        for sub, digest in item.items():
            if _uint(sub) >= SUB_BUCKETS or _uint(digest) >= 2**64:
                raise MessageError("sub-bucket digest out of range")
    return value


def _sub(value: Any) -> int:
    index = _uint(value)
    if index >= BUCKETS * SUB_BUCKETS:
        raise MessageError(f"sub-bucket {index} out of range")
    return index


def _bucket(value: Any) -> int:
    # Bucket ids and non-final snapshot cursors are always < BUCKETS (a final chunk's cursor
    # is not decoded). Accepting BUCKETS itself made a repair request for "bucket 1024" raise
    # IndexError in the receiver's callback instead of being dropped.
    index = _uint(value)
    if index >= BUCKETS:
        raise MessageError(f"bucket {index} out of range")
    return index


def unpack_changes(packed: Any) -> list[Change]:
    if not isinstance(packed, bytes):
        raise MessageError("changes are not a byte string")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(packed) + 1)
    unpacker.feed(packed)
    changes, end = [], 0
    try:
        for item in unpacker:
            changes.append(decode_change(item))
            end = unpacker.tell()
    except ChangeDecodeError:
        raise
    except Exception as error:
        raise MessageError(f"corrupt change list: {error}") from None
    # Iteration stops silently at a truncated last change (and tell() then counts its start).
    if end != len(packed):
        raise MessageError("corrupt change list: truncated")
    return changes


class Batch:
    """Packed changes accumulated up to a byte budget."""

    __slots__ = ("count", "limit", "parts", "size")

    def __init__(self, limit: int = CHUNK_TARGET_BYTES) -> None:
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0
        self.count = 0

    def fits(self, packed: bytes) -> bool:
        """Whether ``packed`` fits; an empty batch takes anything up to the hard maximum."""
        if not self.parts:
            return len(packed) <= MAX_MESSAGE_BYTES - 1024
        return self.size + len(packed) <= self.limit

    def add(self, packed: bytes) -> None:
        self.parts.append(packed)
        self.size += len(packed)
        self.count += 1

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size, self.count = [], 0, 0
        return data
