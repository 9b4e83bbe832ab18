"""provider.store.codec: change records round-trip, and malformed ones fail cleanly.

Change records come from the network, so the decoder's one promise is: a record either decodes
into a change that is safe to apply, or raises :class:`ChangeDecodeError`; nothing else escapes.
"""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.store import Change, KeyValueStore, Kind
from provider.store.codec import ChangeDecodeError, decode_change, encode_change
from provider.store.entry import canonical

START_MS = 1_700_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


def snapshot(store: KeyValueStore) -> list:
    return sorted((key, canonical(entry)) for key, entry in store.items())


def packed(record: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(record))


def build_corpus() -> list[Change]:
    """Changes of every kind, deltas and full states, including an out-of-order context."""
    clock = FakeClock()
    a = KeyValueStore("0000000000000000", now_ms=clock)
    b = KeyValueStore("0000000000000001", now_ms=clock)
    changes: list[Change] = [
        a.set("plain", "hello"),
        a.set("ttl", "v", expires=30),
        a.set("empty", ""),
        a.set("unicode", "h\u00e9llo \u2603 \U0001f600"),
        a.increment("counter", 5)[1],
        a.increment("counter", -2)[1],
        a.set("based", "10", expires=5),
        a.increment("based", 3)[1],
        a.delete("plain")[1],
    ]
    list_deltas = [a.list_add("list", v)[1] for v in ("x", "y", "x", "z")]
    changes += list_deltas
    changes.append(a.list_del("list", "x")[1])
    set_deltas = [a.set_add("set", v)[1] for v in ("p", "q", "r")]
    changes += set_deltas
    changes.append(a.set_del("set", "q")[1])
    for change in (list_deltas[0], list_deltas[2], set_deltas[2]):  # gaps: a cloud forms
        b.apply(change)
    changes.append(b.increment("counter", 7)[1])
    changes += [Change(key, entry.copy()) for store in (a, b) for key, entry in store.items()]
    return [change for change in changes if change is not None]


CORPUS = build_corpus()


def test_the_corpus_covers_every_kind_and_a_cloud() -> None:
    kinds = {change.entry.kind for change in CORPUS}
    assert kinds == set(Kind)
    assert any(change.entry.counts for change in CORPUS)
    assert any(change.entry.deadline for change in CORPUS)
    clouds = [
        change.entry.value.ctx.cloud
        for change in CORPUS
        if change.entry.kind in (Kind.LIST, Kind.SET)
    ]
    assert any(clouds)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_round_trip(index: int) -> None:
    change = CORPUS[index]
    record = encode_change(change)
    assert decode_change(record) == change
    assert decode_change(packed(record)) == change
    assert canonical(decode_change(packed(record)).entry) == canonical(change.entry)


@pytest.mark.parametrize("index", range(len(CORPUS)))
def test_a_decoded_change_applies_like_the_original(index: int) -> None:
    change = CORPUS[index]
    direct = KeyValueStore("00000000000000ee", now_ms=FakeClock())
    wired = KeyValueStore("00000000000000ee", now_ms=FakeClock())
    direct.apply(change)
    wired.apply(decode_change(packed(encode_change(change))))
    assert [(k, canonical(e)) for k, e in direct.items()] == [
        (k, canonical(e)) for k, e in wired.items()
    ]


def test_decode_sorts_list_items_and_compacts_the_context() -> None:
    record = [
        "l",
        0,
        "",
        1,
        int(Kind.LIST),
        0,
        [
            [[9, "0000000000000001", 1, "late"], [3, "0000000000000000", 1, "early"]],
            {"0000000000000000": 1},
            [["0000000000000001", 1], ["0000000000000000", 1]],
        ],
        None,
    ]
    change = decode_change(record)
    assert change.entry.value.values() == ["early", "late"]
    assert change.entry.value.ctx.vv == {"0000000000000000": 1, "0000000000000001": 1}
    assert change.entry.value.ctx.cloud == set()


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(ChangeDecodeError, ValueError)


@pytest.mark.parametrize(
    "record",
    [
        None,
        [],
        "12345678",
        ["k", 1, "0000000000000000", 0, 1, 0, "v"],  # seven fields
        ["k", 1, "0000000000000000", 0, 1, 0, "v", None, None],  # nine fields
        [1, 1, "0000000000000000", 0, 1, 0, "v", None],  # key not a string
        ["k", -1, "0000000000000000", 0, 1, 0, "v", None],  # negative stamp
        ["k", True, "0000000000000000", 0, 1, 0, "v", None],  # bool stamp
        ["k", 1.0, "0000000000000000", 0, 1, 0, "v", None],  # float stamp
        ["k", 1, b"0000000000000000", 0, 1, 0, "v", None],  # bytes origin
        ["k", 1, "0000000000000000", 0, 9, 0, "v", None],  # unknown kind
        ["k", 1, "0000000000000000", 0, 1, 0, b"v", None],  # bytes value
        ["k", 1, "0000000000000000", 0, 0, 0, "v", None],  # tombstone with a payload
        ["k", 1, "0000000000000000", 0, 1, 0, "5", {"0000000000000000": [1]}],  # short counts pair
        ["k", 1, "0000000000000000", 0, 1, 0, "5", {"0000000000000000": [-1, 2]}],  # negative count
        [
            "k",
            1,
            "0000000000000000",
            0,
            1,
            0,
            "5",
            [["0000000000000000", 1, 2]],
        ],  # counts not a map
        [
            "k",
            1,
            "0000000000000000",
            0,
            2,
            0,
            [[], {}, []],
            {"0000000000000000": [1, 2]},
        ],  # counts on a list
        ["k", 1, "0000000000000000", 0, 2, 0, [[], {}], None],  # list payload too short
        [
            "k",
            1,
            "0000000000000000",
            0,
            2,
            0,
            [[[1, "0000000000000000", 1]], {}, []],
            None,
        ],  # item too short
        [
            "k",
            1,
            "0000000000000000",
            0,
            2,
            0,
            [[], {"0000000000000000": -1}, []],
            None,
        ],  # negative vector entry
        [
            "k",
            1,
            "0000000000000000",
            0,
            2,
            0,
            [[], {}, [["0000000000000000"]]],
            None,
        ],  # short cloud dot
        [
            "k",
            1,
            "0000000000000000",
            0,
            3,
            0,
            [[["m", [["0000000000000000", 1]]]], {}, []],
            None,
        ],  # members not a map
        [
            "k",
            1,
            "0000000000000000",
            0,
            3,
            0,
            [{"m": [["0000000000000000", "1"]]}, {}, []],
            None,
        ],  # bad dot
        ["k", 1, "0000000000000000", 0, 3, 0, [{"m": 5}, {}, []], None],  # dots not a list
        # Decodable shapes that would make applying a record twice change the state:
        ["k", 1, "0000000000000000", 0, 3, 0, [{"m": []}, {}, []], None],  # a member without dots
        [
            "k",
            1,
            "0000000000000000",
            0,
            2,
            0,
            [[[1, "0000000000000000", 1, "a"], [2, "0000000000000000", 1, "b"]], {}, []],
            None,
        ],  # same dot
        # A zero counter is "seen nothing", which a vector never stores: digests would differ
        # forever between a replica that adopted it and one that joined it.
        ["k", 1, "0000000000000000", 0, 2, 0, [[], {"0000000000000000": 0}, []], None],
    ],
)
def test_malformed_records_raise_change_decode_error(record: Any) -> None:
    with pytest.raises(ChangeDecodeError):
        decode_change(record)


# ---------------------------------------------------------------------------- fuzzing
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.integers(-3, 3)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=4)
)
garbage = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=9) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=25,
)
shaped = st.tuples(
    st.text(max_size=3) | garbage,
    st.integers(0, 2**64 - 1) | garbage,
    st.text(max_size=3) | garbage,
    st.integers(0, 3) | garbage,
    st.integers(0, 3) | garbage,
    st.integers(0, 2**64 - 1) | garbage,
    garbage,
    st.none() | garbage,
).map(list)


def assert_decodes_cleanly(record: Any) -> None:
    """Only ChangeDecodeError may escape; a decoded change must be safe to use."""
    try:
        change = decode_change(record)
    except ChangeDecodeError:
        return
    store = KeyValueStore("00000000000000ff", now_ms=FakeClock())
    store.track_digests()
    store.apply(change)
    once = snapshot(store)
    store.apply(change)  # applying is idempotent, even for a strange but decodable record
    assert snapshot(store) == once
    msgpack.packb(encode_change(change))
    fresh = KeyValueStore("00000000000000fe", now_ms=FakeClock())
    for key, entry in store.items():
        store.contains(key)
        fresh.apply(Change(key, entry))
    assert store.track_digests() == fresh.track_digests()


@settings(max_examples=400, deadline=None)
@given(record=garbage | shaped)
def test_garbage_raises_only_change_decode_error(record: Any) -> None:
    assert_decodes_cleanly(record)
    assert_decodes_cleanly(packed(record))


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every position inside a nested record, as a path of list indices and dict keys."""
    found = [prefix]
    if isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    return found


def mutate(record: Any, data: st.DataObject) -> Any:
    path = data.draw(st.sampled_from(paths(record)), label="path")
    if not path:
        return data.draw(garbage, label="replacement")
    parent = record
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "insert", "rekey"]), label="action")
    if action == "replace":
        parent[last] = data.draw(garbage, label="replacement")
    elif action == "delete":
        del parent[last]
    elif action == "insert" and isinstance(parent, list):
        parent.insert(last, data.draw(garbage, label="inserted"))
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=3), label="new key")] = parent.pop(last)
    return record


@settings(max_examples=500, deadline=None)
@given(change=st.sampled_from(CORPUS), data=st.data())
def test_mutated_records_raise_only_change_decode_error(
    change: Change, data: st.DataObject
) -> None:
    record = packed(encode_change(change))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        record = mutate(copy.deepcopy(record), data)
    assert_decodes_cleanly(record)
