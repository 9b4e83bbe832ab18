"""provider.replication.messages: versioned, bounded, validated replication messages.

The decoder's promise: bytes from the network either decode into a well-formed
:class:`Message` or raise :class:`MessageError`; nothing else escapes (a malformed change
record, a :class:`ChangeDecodeError` inside, surfaces as a MessageError too).
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provider.replication import messages as m
from provider.replication.messages import (
    CHUNK_TARGET_BYTES,
    FORMAT,
    MAX_MESSAGE_BYTES,
    MAX_REPAIR_BUCKETS,
    Batch,
    Message,
    MessageError,
    decode,
    encode,
    pack_change,
    unpack_changes,
)
from provider.store import BUCKETS, SUB_BUCKETS, Change, KeyValueStore
from provider.store.codec import ChangeDecodeError
from provider.store.entry import canonical
from tests.harness.strategies import msgpack_values

START_MS = 1_700_000_000_000
TYPES = ("ch", "dg", "rr", "rp", "pu", "sr", "so", "sp", "sc", "ak", "ck")


def build_changes() -> list[Change]:
    """Changes of every kind, as a store produces them, plus full-state copies."""
    store = KeyValueStore("00000000000000aa", now_ms=lambda: START_MS)
    changes = [
        store.set("plain", "hello"),
        store.set("ttl", "v", expires=30),
        store.set("unicode", "h\u00e9llo \u2603 \U0001f600"),
        store.set("", "empty key"),
        store.increment("counter", 5)[1],
        store.delete("plain")[1],
        store.list_add("list", "x")[1],
        store.list_add("list", "y")[1],
        store.list_del("list", "x")[1],
        store.set_add("set", "p")[1],
        store.set_add("set", "q")[1],
        store.set_del("set", "p")[1],
    ]
    changes += [Change(key, entry.copy()) for key, entry in store.items()]
    return [change for change in changes if change is not None]


CHANGES = build_changes()


def plain(changes: list[Change]) -> list:
    return [(change.key, canonical(change.entry)) for change in changes]


def raw(body: dict[Any, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def valid_body(t: str) -> dict[str, Any]:
    """A minimal well-formed body of each type, as plain data (to corrupt field by field)."""
    body: dict[str, Any] = {"f": FORMAT, "t": t, "n": "00000000000000aa"}
    packed = b"".join(pack_change(c) for c in CHANGES[:3])
    extra: dict[str, dict[str, Any]] = {
        "ch": {"s": 3, "c": packed, "w": 1234},
        "dg": {"s": 3, "d": bytes(8 * BUCKETS)},
        "rr": {"b": [1, 2], "m": [{0: 7, 63: 2**64 - 1}, {}]},
        "rp": {"b": [1, 2], "x": [1 * SUB_BUCKETS + 3, 2 * SUB_BUCKETS], "c": packed},
        "pu": {"c": packed},
        "sr": {},
        "so": {"k": 10},
        "sp": {"u": 5, "o": 2},
        "sc": {"c": packed, "u": 5, "o": 2, "e": False},
        "ak": {"a": [1, 2, 7]},
        "ck": {"h": 1200},
    }
    body.update(extra[t])
    return body


def raises_message_error(data: bytes) -> MessageError:
    with pytest.raises(MessageError) as info:
        decode(data)
    assert type(info.value) is MessageError  # not a bare ChangeDecodeError or other ValueError
    return info.value


# ---------------------------------------------------------------------------- round trips


def test_every_valid_body_decodes() -> None:
    for t in TYPES:
        assert decode(raw(valid_body(t))).type == t


def test_change_batch_round_trip() -> None:
    message = Message("ch", "00000000000000aa", seq=42, changes=CHANGES, sent_ms=START_MS)
    data = encode(message)
    back = decode(data)
    assert (back.type, back.node, back.seq, back.sent_ms) == (
        "ch",
        "00000000000000aa",
        42,
        START_MS,
    )
    assert plain(back.changes) == plain(CHANGES)
    # pre-packed changes give the same bytes
    assert encode(message, b"".join(pack_change(c) for c in CHANGES)) == data


def test_change_batch_without_wall_clock_and_without_changes() -> None:
    body = valid_body("ch")
    del body["w"]
    body["c"] = b""
    back = decode(raw(body))
    assert back.sent_ms == 0
    assert back.changes == []


def test_digest_round_trip() -> None:
    rng = random.Random(7)
    digests = [rng.getrandbits(64) for _ in range(BUCKETS)]
    digests[0], digests[-1] = 0, 2**64 - 1
    back = decode(encode(Message("dg", "00000000000000bb", seq=9, digests=digests)))
    assert (back.type, back.node, back.seq) == ("dg", "00000000000000bb", 9)
    assert back.digests == digests
    assert len(back.digests) == BUCKETS


def test_repair_request_round_trip() -> None:
    buckets = [0, 5, 17, BUCKETS - 1]
    sparse = [{0: 1}, {}, {63: 2**64 - 1, 1: 5}, {s: s + 1 for s in range(SUB_BUCKETS)}]
    back = decode(encode(Message("rr", "00000000000000cc", buckets=buckets, sub_digests=sparse)))
    assert (back.type, back.node, back.buckets) == ("rr", "00000000000000cc", buckets)
    assert back.sub_digests == sparse
    empty = decode(encode(Message("rr", "00000000000000cc")))
    assert (empty.buckets, empty.sub_digests) == ([], [])


def test_repair_request_bounds_its_bucket_count() -> None:
    body = valid_body("rr")
    body["b"] = list(range(MAX_REPAIR_BUCKETS + 1))
    body["m"] = [{}] * (MAX_REPAIR_BUCKETS + 1)
    assert "at most" in str(raises_message_error(raw(body)))


def test_repair_reply_and_push_round_trip() -> None:
    subs = [0, 5 * SUB_BUCKETS + 63, BUCKETS * SUB_BUCKETS - 1]
    back = decode(
        encode(Message("rp", "00000000000000cc", buckets=[0, 5], subs=subs, changes=CHANGES))
    )
    assert (back.type, back.buckets, back.subs) == ("rp", [0, 5], subs)
    assert plain(back.changes) == plain(CHANGES)
    push = decode(encode(Message("pu", "00000000000000cc", changes=CHANGES)))
    assert (push.type, plain(push.changes)) == ("pu", plain(CHANGES))


def test_snapshot_hello_round_trip() -> None:
    back = decode(encode(Message("sr", "00000000000000dd")))
    assert (back.type, back.node, back.changes, back.buckets) == ("sr", "00000000000000dd", [], [])


def test_snapshot_offer_round_trip() -> None:
    back = decode(encode(Message("so", "00000000000000ee", keys=123_456)))
    assert (back.type, back.node, back.keys) == ("so", "00000000000000ee", 123_456)


def test_snapshot_pull_round_trip() -> None:
    back = decode(encode(Message("sp", "00000000000000ff", buckets=[BUCKETS - 1], offset=77)))
    assert (back.type, back.node, back.buckets, back.offset) == (
        "sp",
        "00000000000000ff",
        [1023],
        77,
    )
    first = decode(encode(Message("sp", "00000000000000ff")))  # no cursor: from the start
    assert (first.buckets, first.offset) == ([0], 0)


def test_snapshot_chunk_round_trip() -> None:
    chunk = Message("sc", "000000000000000e", changes=CHANGES, buckets=[12], offset=3, end=False)
    back = decode(encode(chunk))
    assert (back.type, back.node, back.buckets, back.offset, back.end) == (
        "sc",
        "000000000000000e",
        [12],
        3,
        False,
    )
    assert plain(back.changes) == plain(CHANGES)


def test_final_snapshot_chunk_round_trip() -> None:
    # The provider ends a snapshot with the cursor one past the last bucket; it is not decoded.
    chunk = Message(
        "sc", "000000000000000e", changes=CHANGES[:2], buckets=[BUCKETS], offset=0, end=True
    )
    back = decode(encode(chunk))
    assert back.end is True
    assert back.buckets == [0]
    assert plain(back.changes) == plain(CHANGES[:2])


# ---------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("version", [0, 1, 3, -1, 2**32, None, "2", b"\x02", [2], 2.5])
def test_other_format_versions_are_rejected(version: Any) -> None:
    for t in TYPES:
        body = valid_body(t)
        body["f"] = version
        error = raises_message_error(raw(body))
        assert "format" in str(error)


def test_missing_format_is_rejected() -> None:
    body = valid_body("sr")
    del body["f"]
    raises_message_error(raw(body))


@pytest.mark.parametrize(
    ("field", "value"),
    [("t", None), ("t", 1), ("t", b"ch"), ("n", ""), ("n", None), ("n", 5), ("n", b"x")],
)
def test_bad_type_or_node_is_rejected(field: str, value: Any) -> None:
    body = valid_body("sr")
    body[field] = value
    raises_message_error(raw(body))


@pytest.mark.parametrize("t", ["", "xx", "CH", "dg2"])
def test_unknown_types_are_rejected(t: str) -> None:
    raises_message_error(raw({"f": FORMAT, "t": t, "n": "a"}))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", raw({"f": 1}) + b"\x00"])
def test_non_maps_and_corrupt_bytes_are_rejected(data: bytes) -> None:
    raises_message_error(data)


UINT_BAD = [-1, "1", 1.5, 1.0, True, False, None, b"1", [1], {"a": 1}, 2**62 + 1, 2**64 - 1]
BUCKET_BAD = [*UINT_BAD, BUCKETS, BUCKETS + 1, 2**64 - 1]
_packed = pack_change(CHANGES[0])
CHANGES_BAD = [
    "text",
    1,
    None,
    [_packed],
    {"a": 1},
    b"\xc1",  # never-used msgpack byte
    _packed + raw([1, 2]),  # a record that is not a change (ChangeDecodeError inside)
    raw(["k", 1, "o", 0, 99, 0, None, None]),  # unknown kind
    raw(["k", -1, "o", 0, 0, 0, "v", None]),  # negative stamp
    _packed + _packed[:-1],  # truncated last change
    _packed[:1],
]
DIGESTS_BAD = [b"", bytes(8 * BUCKETS - 1), bytes(8 * BUCKETS + 1), "x" * 8 * BUCKETS, [0] * 1024]
WRONG_FIELDS = (
    [("ch", "s", v) for v in UINT_BAD]
    + [("dg", "s", v) for v in UINT_BAD]
    + [("ch", "w", v) for v in UINT_BAD]
    + [(t, "c", v) for t in ("ch", "rp", "pu", "sc") for v in CHANGES_BAD]
    + [
        ("rr", "m", v)
        for v in (b"", "x", None, [{}], [{}, {}, {}], [{}, []], [{64: 1}, {}], [{0: -1}, {}])
    ]
    + [("rr", "m", v) for v in ([{"0": 1}, {}], [{0: True}, {}], [{0: 1.5}, {}])]
    + [("rp", "x", v) for v in (5, None, "1", [-1], [BUCKETS * SUB_BUCKETS], [True], [1.0])]
    + [("dg", "d", v) for v in DIGESTS_BAD]
    + [(t, "b", v) for t in ("rr", "rp") for v in (5, "1", None, b"\x01", {"a": 1}, True)]
    + [(t, "b", [1, v]) for t in ("rr", "rp") for v in BUCKET_BAD]
    + [(t, "u", v) for t in ("sp", "sc") for v in BUCKET_BAD]
    + [("ak", "a", v) for v in (5, None, "1", [-1], [True], [1.0], list(range(257)))]
    + [("ck", "h", v) for v in UINT_BAD]
    + [("ch", "q", v) for v in (1, 0, "yes", None)]
    + [(t, "o", v) for t in ("sp", "sc") for v in UINT_BAD]
    + [("sc", "e", v) for v in (1, 0, "yes", "", None, [], b"\x01", 1.0)]
    + [("so", "k", v) for v in UINT_BAD]
)


@pytest.mark.parametrize(("t", "field", "value"), WRONG_FIELDS)
def test_wrong_field_types_are_rejected(t: str, field: str, value: Any) -> None:
    body = valid_body(t)
    body[field] = value
    raises_message_error(raw(body))


REQUIRED = {
    "ch": ["s", "c"],
    "dg": ["s", "d"],
    "rr": ["b", "m"],
    "rp": ["b", "x", "c"],
    "pu": ["c"],
    "so": ["k"],
    "sp": ["u", "o"],
    "sc": ["c", "u", "o", "e"],
    "ak": ["a"],
    "ck": ["h"],
}


@pytest.mark.parametrize(("t", "field"), [(t, f) for t, fields in REQUIRED.items() for f in fields])
def test_missing_fields_are_rejected(t: str, field: str) -> None:
    body = valid_body(t)
    del body[field]
    error = raises_message_error(raw(body))
    assert field in str(error)


@pytest.mark.parametrize("t", ["rr", "rp", "sp", "sc"])
def test_bucket_ids_must_be_below_bucket_count(t: str) -> None:
    last = valid_body(t)
    name = "b" if t in ("rr", "rp") else "u"
    last[name] = [BUCKETS - 1] if t in ("rr", "rp") else BUCKETS - 1
    if t == "rr":  # one bucket named: one bucket's sub-digests
        last["m"] = [{}]
    assert decode(raw(last)).buckets == [BUCKETS - 1]
    over = dict(last)
    over[name] = [BUCKETS] if t in ("rr", "rp") else BUCKETS
    assert "out of range" in str(raises_message_error(raw(over)))


def test_final_chunk_cursor_is_not_checked() -> None:
    body = valid_body("sc")
    body.update(e=True, u=BUCKETS)
    assert decode(raw(body)).buckets == [0]


def test_bad_change_inside_a_message_is_a_message_error() -> None:
    bad = raw(["k", 1, "o", 0, 99, 0, None, None])
    # unpack_changes lets the codec's ChangeDecodeError (a ValueError) through ...
    with pytest.raises(ChangeDecodeError):
        unpack_changes(bad)
    assert issubclass(ChangeDecodeError, ValueError)
    assert not issubclass(ChangeDecodeError, MessageError)
    # ... and decode() turns it into a MessageError, so receivers catch just that.
    body = valid_body("ch")
    body["c"] = bad
    error = raises_message_error(raw(body))
    assert "malformed change record" in str(error)
    assert error.__cause__ is None


def test_unpack_changes_rejects_truncation_and_non_bytes() -> None:
    assert plain(unpack_changes(_packed + _packed)) == plain([CHANGES[0]] * 2)
    for bad in (_packed[:-1], _packed + _packed[:5], "text", None):
        with pytest.raises(MessageError):
            unpack_changes(bad)


# ---------------------------------------------------------------------------- size bounds


def test_oversized_input_is_rejected_before_parsing() -> None:
    limit = MAX_MESSAGE_BYTES + 64 * 1024
    error = raises_message_error(b"\xc1" * (limit + 1))
    assert "over the limit" in str(error)
    big = Message(
        "ch",
        "000000000000000a",
        seq=1,
        changes=[KeyValueStore("000000000000000a").set("k", "x" * (limit + 10))],
    )
    raises_message_error(encode(big))


def test_largest_allowed_message_decodes() -> None:
    change = KeyValueStore("000000000000000a").set("k", "x" * (MAX_MESSAGE_BYTES - 1024))
    data = encode(Message("ch", "000000000000000a", seq=1, changes=[change]))
    assert MAX_MESSAGE_BYTES - 1024 < len(data) <= MAX_MESSAGE_BYTES
    assert decode(data).changes[0].entry.value == change.entry.value


def test_batch_limits() -> None:
    batch = Batch(limit=100)
    assert (batch.limit, batch.count, batch.size) == (100, 0, 0)
    assert Batch().limit == CHUNK_TARGET_BYTES
    # an empty batch takes a first item up to the hard maximum, even over its own limit
    assert batch.fits(b"x" * (MAX_MESSAGE_BYTES - 1024))
    assert not batch.fits(b"x" * (MAX_MESSAGE_BYTES - 1023))
    batch.add(b"a" * 60)
    assert (batch.count, batch.size) == (1, 60)
    assert batch.fits(b"b" * 40)
    assert not batch.fits(b"b" * 41)
    batch.add(b"b" * 40)
    assert (batch.count, batch.size) == (2, 100)
    assert not batch.fits(b"c")
    assert batch.take() == b"a" * 60 + b"b" * 40
    assert (batch.count, batch.size, batch.parts) == (0, 0, [])
    assert batch.take() == b""
    assert batch.fits(b"x" * 500)  # empty again: the hard maximum applies


def test_batch_first_item_over_the_limit() -> None:
    batch = Batch(limit=10)
    batch.add(b"x" * 500)
    assert (batch.count, batch.size) == (1, 500)
    assert not batch.fits(b"")  # anything after it would overrun the limit
    assert not batch.fits(b"y")


def test_batch_feeds_encode() -> None:
    batch = Batch()
    for change in CHANGES:
        packed = pack_change(change)
        assert batch.fits(packed)
        batch.add(packed)
    assert batch.count == len(CHANGES)
    back = decode(encode(Message("sc", "000000000000000a", buckets=[3], offset=1), batch.take()))
    assert plain(back.changes) == plain(CHANGES)


# ---------------------------------------------------------------------------- fuzzing


def check_decode(data: bytes) -> None:
    """decode() raises only MessageError; what it returns is well-formed and re-encodable."""
    try:
        message = decode(data)
    except MessageError:
        return
    assert message.type in TYPES
    assert isinstance(message.node, str) and message.node
    assert all(0 <= b < BUCKETS for b in message.buckets)
    assert message.seq >= 0 and message.offset >= 0 and message.keys >= 0
    assert isinstance(message.end, bool)
    if message.type == "dg":
        assert message.digests is not None and len(message.digests) == BUCKETS
    again = decode(encode(message))
    assert (again.type, again.node, again.seq, again.buckets, again.offset) == (
        message.type,
        message.node,
        message.seq,
        message.buckets,
        message.offset,
    )
    assert plain(again.changes) == plain(message.changes)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_message_error(data: bytes) -> None:
    check_decode(data)


FIELD_VALUES = {
    "f": st.just(FORMAT) | msgpack_values(allow_nan=True),
    "t": st.sampled_from(TYPES) | msgpack_values(allow_nan=True),
    "n": st.just("node") | msgpack_values(allow_nan=True),
    "s": st.integers(0, 2**64 - 1) | msgpack_values(allow_nan=True),
    "w": st.integers(0, 2**64 - 1) | msgpack_values(allow_nan=True),
    "c": st.sampled_from([b"", _packed, _packed * 2, _packed[:-1]]) | st.binary(max_size=40),
    "d": st.just(bytes(8 * BUCKETS)) | msgpack_values(allow_nan=True),
    "b": st.integers(0, BUCKETS + 1)
    | st.lists(st.integers(-1, BUCKETS + 1), max_size=4)
    | msgpack_values(allow_nan=True),
    "o": st.integers(0, 10) | msgpack_values(allow_nan=True),
    "e": st.booleans() | msgpack_values(allow_nan=True),
    "k": st.integers(0, 10) | msgpack_values(allow_nan=True),
}


@st.composite
def random_bodies(draw: st.DrawFn) -> dict:
    fields = draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), unique=True))
    body: dict = {field: draw(FIELD_VALUES[field]) for field in fields}
    body.update(
        draw(st.dictionaries(st.text(max_size=3), msgpack_values(allow_nan=True), max_size=2))
    )
    return body


@FUZZ
@given(random_bodies())
def test_random_msgpack_maps_raise_only_message_error(body: dict) -> None:
    check_decode(raw(body))


@FUZZ
@given(st.sampled_from(TYPES), msgpack_values(allow_nan=True))
def test_random_top_level_values_raise_only_message_error(t: str, value: Any) -> None:
    check_decode(raw(value))  # type: ignore[arg-type]
    check_decode(raw(valid_body(t)) + raw(value))  # trailing data


SAMPLES = [
    encode(Message("ch", "000000000000000a", seq=1, changes=CHANGES[:4], sent_ms=5)),
    encode(Message("dg", "000000000000000a", seq=2, digests=list(range(BUCKETS)))),
    encode(Message("rr", "000000000000000a", buckets=[1, 2], sub_digests=[{0: 9, 5: 7}, {}])),
    encode(
        Message(
            "rp", "000000000000000a", buckets=[3], subs=[3 * SUB_BUCKETS + 1], changes=CHANGES[8:]
        )
    ),
    encode(Message("pu", "000000000000000a", changes=CHANGES[4:8])),
    encode(Message("sr", "000000000000000a")),
    encode(Message("so", "000000000000000a", keys=3)),
    encode(Message("sp", "000000000000000a", buckets=[4], offset=5)),
    encode(Message("sc", "000000000000000a", buckets=[6], offset=7, changes=CHANGES[:3])),
    encode(Message("sc", "000000000000000a", buckets=[BUCKETS], end=True, changes=CHANGES[3:6])),
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set":
            data[at] = draw(st.integers(0, 255))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 4))]
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_messages_raise_only_message_error(data: bytes) -> None:
    check_decode(data)


def test_samples_are_valid() -> None:
    for data in SAMPLES:
        check_decode(data)
        decode(data)


def test_module_exports_the_documented_limits() -> None:
    assert m.MAX_MESSAGE_BYTES < 1024 * 1024
    assert m.CHUNK_TARGET_BYTES < m.MAX_MESSAGE_BYTES
