"""Replication messages on plain NATS: versioned, bounded, validated. Pure.

Every message body is a msgpack map with ``f`` (format version, :data:`FORMAT`), ``t`` (its
:class:`Kind`) and ``n`` (the sender's node id), plus the fields its kind lists in
:data:`FIELDS`. On the wire each body travels inside a signed envelope (:mod:`.signing`); this
module only sees bodies whose signature has already been checked. It still trusts nothing: every
integer is range-checked, every node id has the one :data:`~provider.store.codec.NODE_ID` format,
and any failure drops the whole message (:class:`MessageError`, the only exception raised here).

=====  ===============  ==============================================================
kind   name             fields
=====  ===============  ==============================================================
``ch`` change batch     ``s`` sender's batch sequence number, ``c`` changes,
                        ``w`` sender's wall clock (ms) at sending, for lag figures,
                        ``q`` true when the sender asks for an ``ak``
``dg`` digest           ``s`` sender's last batch sequence, ``d`` bucket digests (bytes)
``rr`` repair request   ``b`` bucket ids, ``m`` per bucket the sender's non-zero
                        sub-bucket digests (``{sub: digest}``, so a small bucket is cheap)
``rp`` repair reply     ``b`` bucket ids covered, ``x`` differing sub-buckets
                        (``bucket * 64 + sub``), ``c`` the replier's changes for them
``pu`` repair push      ``c`` the requester's changes for those sub-buckets (no reply)
``sr`` snapshot hello   (none): "who can give me a snapshot?"
``so`` snapshot offer   ``k`` key count
``sp`` snapshot pull    ``u`` bucket cursor, ``o`` offset inside the bucket
``sc`` snapshot chunk   ``c`` changes, ``u``/``o`` next cursor, ``e`` true at the end
``ak`` write ack        ``a`` sequence numbers of the receiver's batches we applied
``ck`` clock refused    ``h`` how far (ms) the receiver's stamps ran ahead of our clock
=====  ===============  ==============================================================

Every kind travels signed, with two exceptions (:mod:`.signing`). An ``ak`` sent to one writer
(the point-to-point acks of both modes, not JetStream presence beacons) carries a pair MAC for
the writer instead (:data:`MAC_KINDS`). A ``ch`` published on the events subject carries one
pair MAC per trusted key (:data:`TAG_KINDS`).

``c`` is a bin holding the changes' msgpack encodings back to back: each change is packed once,
when it is measured against the size limit, and never re-packed into an outer array.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from provider.store import BUCKETS, SUB_BUCKETS, Change
from provider.store.codec import (
    MAX_UINT,
    ChangeDecodeError,
    decode_change,
    encode_change,
    is_node_id,
)
from provider.store.entry import ListPayload
from provider.store.hlc import stamp_ms

FORMAT = 2

#: Upper bound on any replication message we publish or accept. Under NATS' default 1 MiB
#: max_payload with room to spare; batches and chunks are cut to stay below it.
MAX_MESSAGE_BYTES = 900 * 1024

#: Target size of one snapshot chunk or repair message: small enough to interleave with live
#: traffic, large enough that per-message overhead is negligible.
CHUNK_TARGET_BYTES = 256 * 1024

_DIGESTS = struct.Struct(f"<{BUCKETS}Q")

#: Buckets named in one repair request (64 sub-digests each: 32 KiB at most).
MAX_REPAIR_BUCKETS = 64
#: Batch numbers acknowledged in one ack message.
MAX_ACKS = 256


class MessageError(ValueError):
    """A message that is not ours, not this version, or malformed."""


class Kind(StrEnum):
    """What a replication message is; the value is its two-letter wire name."""

    CHANGES = "ch"
    DIGEST = "dg"
    REPAIR_REQUEST = "rr"
    REPAIR_REPLY = "rp"
    REPAIR_PUSH = "pu"
    SNAPSHOT_HELLO = "sr"
    SNAPSHOT_OFFER = "so"
    SNAPSHOT_PULL = "sp"
    SNAPSHOT_CHUNK = "sc"
    ACK = "ak"
    CLOCK_REFUSED = "ck"


@dataclass(slots=True)
class Message:
    type: Kind
    node: str
    seq: int = 0
    changes: list[Change] = field(default_factory=list)
    #: A digest message's bucket digests (:data:`~provider.store.BUCKETS` of them).
    digests: list[int] = field(default_factory=list)
    #: Bucket ids (repairs), or the one-element snapshot cursor (pulls and chunks).
    buckets: list[int] = field(default_factory=list)
    offset: int = 0
    keys: int = 0
    end: bool = False
    sent_ms: int = 0
    subs: list[int] = field(default_factory=list)
    sub_digests: list[dict[int, int]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    ahead_ms: int = 0
    #: On a change batch: the sender waits for an ack (``WRITE_ACK=peers``).
    ack: bool = False
    #: Not on the wire: the raw Ed25519 key whose envelope carried this message, set by the
    #: channel once the envelope checked out (an acker MACs its ack for this key).
    signer: bytes = b""


def pack_change(change: Change) -> bytes:
    return msgpack.packb(encode_change(change), use_bin_type=True)


# ---------------------------------------------------------------------- one table of fields
# Each wire field: (attribute, encode(message) -> wire value, decode(wire value, message)).
_Encoder = Callable[[Message], Any]
_Decoder = Callable[[Any, Message], None]


def _set(attribute: str, check: Callable[[Any], Any]) -> _Decoder:
    return lambda value, message: setattr(message, attribute, check(value))


def _decode_flag(attribute: str) -> _Decoder:
    def decode_flag(value: Any, message: Message) -> None:
        if not isinstance(value, bool):
            raise MessageError(f"{attribute} flag is not a boolean")
        setattr(message, attribute, value)

    return decode_flag


_decode_end = _decode_flag("end")


def _decode_cursor(value: Any, message: Message) -> None:
    # A final chunk's cursor says nothing (it may be BUCKETS); every other one names a bucket.
    message.buckets = [0 if message.end else _bucket(value)]


_FIELD_CODECS: dict[str, tuple[_Encoder, _Decoder]] = {
    "s": (lambda msg: msg.seq, _set("seq", lambda v: _uint(v))),
    "w": (lambda msg: msg.sent_ms, _set("sent_ms", lambda v: _uint(v))),
    "d": (lambda msg: _DIGESTS.pack(*msg.digests), _set("digests", lambda v: _digests(v))),
    "b": (lambda msg: msg.buckets, _set("buckets", lambda v: _buckets(v))),
    "m": (lambda msg: msg.sub_digests, _set("sub_digests", lambda v: _sub_digest_maps(v))),
    "x": (lambda msg: msg.subs, _set("subs", lambda v: _subs(v))),
    "e": (lambda msg: msg.end, _decode_end),
    "u": (lambda msg: msg.buckets[0] if msg.buckets else 0, _decode_cursor),
    "o": (lambda msg: msg.offset, _set("offset", lambda v: _uint(v))),
    "k": (lambda msg: msg.keys, _set("keys", lambda v: _uint(v))),
    "a": (lambda msg: msg.acks, _set("acks", lambda v: _acks(v))),
    "h": (lambda msg: msg.ahead_ms, _set("ahead_ms", lambda v: _uint(v))),
    "q": (lambda msg: msg.ack, _decode_flag("ack")),
}

#: The fields of each kind, in decoding order (``e`` before ``u``: the end flag decides how the
#: cursor is checked). ``c`` (changes) is handled apart: it is packed once, never re-packed.
FIELDS: dict[Kind, tuple[str, ...]] = {
    Kind.CHANGES: ("c", "s", "w", "q"),
    Kind.DIGEST: ("s", "d"),
    Kind.REPAIR_REQUEST: ("b", "m"),
    Kind.REPAIR_REPLY: ("b", "x", "c"),
    Kind.REPAIR_PUSH: ("c",),
    Kind.SNAPSHOT_HELLO: (),
    Kind.SNAPSHOT_OFFER: ("k",),
    Kind.SNAPSHOT_PULL: ("u", "o"),
    Kind.SNAPSHOT_CHUNK: ("c", "e", "u", "o"),
    Kind.ACK: ("a",),
    Kind.CLOCK_REFUSED: ("h",),
}


#: Kinds a receiver accepts under a pair MAC (one recipient) where it expects them: acks.
MAC_KINDS = frozenset({Kind.ACK})
#: Kinds a receiver accepts tagged for every trusted key where it expects them: live batches.
TAG_KINDS = frozenset({Kind.CHANGES})


#: Fields a decoder may miss (their defaults apply): lag figures and ack requests are extras.
OPTIONAL = frozenset({"w", "q"})


def encode(message: Message, packed_changes: bytes | None = None) -> bytes:
    """Serialise; ``packed_changes`` (from :func:`pack_change`, concatenated) saves re-packing."""
    kind = Kind(message.type)  # also a kind given by its wire name, a plain string
    body: dict[str, Any] = {"f": FORMAT, "t": kind.value, "n": message.node}
    for name in FIELDS[kind]:
        if name == "c":
            body["c"] = (
                packed_changes
                if packed_changes is not None
                else b"".join(pack_change(c) for c in message.changes)
            )
        else:
            body[name] = _FIELD_CODECS[name][0](message)
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes) -> Message:
    """A validated message, or :class:`MessageError`; linear in the size of ``data``."""
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
    if not isinstance(t, str) or not isinstance(node, str):
        raise MessageError("missing type or node")
    if not is_node_id(node):
        raise MessageError("node id has the wrong format")
    try:
        kind = Kind(t)
    except ValueError:
        raise MessageError(f"unknown message type {t!r}") from None
    message = Message(kind, node)
    try:
        for name in FIELDS[kind]:
            if name == "c":
                message.changes = unpack_changes(body["c"])
            elif name in body or name not in OPTIONAL:
                _FIELD_CODECS[name][1](body[name], message)
    except KeyError as missing:
        raise MessageError(f"{t} message without field {missing}") from None
    except ChangeDecodeError as error:
        raise MessageError(str(error)) from None
    if kind == Kind.REPAIR_REQUEST and len(message.sub_digests) != len(message.buckets):
        raise MessageError("sub-bucket digests do not match the buckets")
    return message


def ahead_ms(changes: list[Change], now_ms: int) -> int:
    """How far (ms) the latest stamp in ``changes`` lies ahead of ``now_ms``; 0 if none does.

    Entry stamps and list-item stamps both count: either would drag our clock forward.
    """
    latest = 0
    for change in changes:
        entry = change.entry
        latest = max(latest, entry.stamp)
        value = entry.value
        if isinstance(value, ListPayload) and value.items:
            latest = max(latest, value.items[-1][0])
    return max(stamp_ms(latest) - now_ms, 0)


def _digests(value: Any) -> list[int]:
    if not isinstance(value, bytes) or len(value) != _DIGESTS.size:
        raise MessageError("digest vector has the wrong size")
    return list(_DIGESTS.unpack(value))


def _buckets(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > BUCKETS:
        raise MessageError("buckets is not a list of bucket ids")
    return [_bucket(b) for b in value]


def _subs(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > BUCKETS * SUB_BUCKETS:
        raise MessageError("sub-buckets is not a list")
    return [_sub(x) for x in value]


def _acks(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > MAX_ACKS:
        raise MessageError(f"acks is not a list of at most {MAX_ACKS} numbers")
    return [_uint(seq) for seq in value]


def _uint(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_UINT:
        raise MessageError(f"expected an integer in 0..2^62, got {value!r}")
    return value


def _sub_digest_maps(value: Any) -> list[dict[int, int]]:
    if not isinstance(value, list):
        raise MessageError("sub-bucket digests are not a list")
    if len(value) > MAX_REPAIR_BUCKETS:
        raise MessageError(
            f"{len(value)} buckets in one repair request (at most {MAX_REPAIR_BUCKETS})"
        )
    for item in value:
        if not isinstance(item, dict) or len(item) > SUB_BUCKETS:
            raise MessageError("sub-bucket digests are not a map")
        for sub, digest in item.items():
            if not _is_int(sub) or not 0 <= sub < SUB_BUCKETS:
                raise MessageError("sub-bucket out of range")
            if not _is_int(digest) or not 0 <= digest < 2**64:
                raise MessageError("sub-bucket digest out of range")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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


def message_limit(max_payload: int | None) -> int:
    """The largest replication message to build for a connection whose server accepts
    ``max_payload`` bytes: an operator may run a server with a lower limit than NATS' 1 MiB
    default, and a message over it would make the server close the connection (and an entry
    too large for it would stall every repair that includes it). Room is left for the
    envelope, the subject and the message header."""
    if not max_payload or max_payload <= 0:
        return MAX_MESSAGE_BYTES
    return max(min(MAX_MESSAGE_BYTES, max_payload - 4096), 4096)


class Batch:
    """Packed changes accumulated up to a byte budget."""

    __slots__ = ("count", "limit", "max_bytes", "parts", "size")

    def __init__(
        self, limit: int = CHUNK_TARGET_BYTES, *, max_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        #: The hard maximum: what the connection can carry (:func:`message_limit`).
        self.max_bytes = max_bytes
        self.limit = min(limit, max_bytes - 1024)
        self.parts: list[bytes] = []
        self.size = 0
        self.count = 0

    def fits(self, packed: bytes) -> bool:
        """Whether ``packed`` fits; an empty batch takes anything up to the hard maximum."""
        if not self.parts:
            return len(packed) <= self.max_bytes - 1024
        return self.size + len(packed) <= self.limit

    def add(self, packed: bytes) -> None:
        self.parts.append(packed)
        self.size += len(packed)
        self.count += 1

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size, self.count = [], 0, 0
        return data
