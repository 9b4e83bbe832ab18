"""Per-call bounds: no single read holds the event loop for long.

The attack that motivated them: ``SetUnion`` naming one 2,000-member set 150,000 times took 12 s
of event loop. Names are now deduplicated (order-preserving) first, and the number of names,
the members read and the result size are bounded, refused with an ``ERR`` text beyond that.
"""

from __future__ import annotations

import time

import msgpack
import pytest

from contract.keyvalue import OPERATIONS, ListRangeRequest
from provider.rpc import kvservice
from provider.store import (
    MAX_RESULT_ITEMS,
    MAX_SET_NAMES,
    MAX_SET_NAMES_GIVEN,
    MAX_SET_SCAN,
    KeyValueStore,
    TooLargeError,
    TooMuchWorkError,
    WrongTypeError,
    distinct_names,
)
from provider.store import store as store_module


@pytest.fixture
def store() -> KeyValueStore:
    return KeyValueStore("node-a")


def members(store: KeyValueStore, name: str, count: int, prefix: str = "m") -> set[str]:
    for i in range(count):
        store.set_add(name, f"{prefix}{i}")
    return {f"{prefix}{i}" for i in range(count)}


def test_distinct_names_keeps_first_seen_order() -> None:
    assert distinct_names(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
    assert distinct_names([]) == []
    assert distinct_names(["only"]) == ["only"]


def test_distinct_names_bounds_given_and_distinct_names() -> None:
    assert distinct_names(["same"] * MAX_SET_NAMES_GIVEN) == ["same"]
    with pytest.raises(TooMuchWorkError, match=r"^ERR too many set names"):
        distinct_names(["same"] * (MAX_SET_NAMES_GIVEN + 1))
    assert len(distinct_names([f"n{i}" for i in range(MAX_SET_NAMES)])) == MAX_SET_NAMES
    with pytest.raises(TooMuchWorkError, match=r"^ERR too many distinct set names"):
        distinct_names([f"n{i}" for i in range(MAX_SET_NAMES + 1)])


def test_union_attack_is_deduplicated_and_fast(store: KeyValueStore) -> None:
    """One 2,000-member set named 150,000 times: the 2,000 members, in well under 50 ms."""
    expected = members(store, "team", 2000)
    names = ["team"] * 150_000
    started = time.perf_counter()
    union = store.set_union(names)
    intersection = store.set_intersection(names)
    elapsed = time.perf_counter() - started
    assert sorted(union) == sorted(expected) and len(union) == 2000
    assert sorted(intersection) == sorted(expected)
    assert elapsed < 0.2  # ~10 ms here; generous for a loaded machine


def test_union_attack_through_the_service_is_fast(store: KeyValueStore) -> None:
    """The whole operation path: decode the 600 KB argument, dedupe, check keys, encode."""
    expected = members(store, "atk", 2000)
    op = OPERATIONS["SetUnion"]
    arg = op.decode_input(op.encode_input(["atk"] * 150_000))
    started = time.perf_counter()
    reply, change = kvservice.execute(store, op, arg)
    elapsed = time.perf_counter() - started
    assert change is None
    assert set(op.decode_output(reply)) == expected
    assert elapsed < 0.2


def test_service_checks_key_length_once_per_distinct_name(store: KeyValueStore) -> None:
    op = OPERATIONS["SetIntersection"]
    with pytest.raises(TooLargeError, match="ERR key is longer"):
        kvservice.execute(store, op, ["ok"] * 1000 + ["k" * 20_000] * 1000)


def test_union_and_intersection_keep_their_semantics_with_duplicates(
    store: KeyValueStore,
) -> None:
    members(store, "a", 5)  # m0..m4
    for value in ("m3", "m4", "x"):
        store.set_add("b", value)
    store.set("str", "v")
    assert sorted(store.set_union(["a", "b", "a", "missing"])) == [
        "m0",
        "m1",
        "m2",
        "m3",
        "m4",
        "x",
    ]
    assert sorted(store.set_intersection(["b", "a", "b", "a"])) == ["m3", "m4"]
    assert store.set_intersection(["a", "missing", "a"]) == []  # any missing set: empty
    assert store.set_union([]) == [] and store.set_intersection([]) == []
    with pytest.raises(WrongTypeError):
        store.set_union(["a", "str", "a"])
    with pytest.raises(WrongTypeError):
        store.set_intersection(["a", "missing", "str"])  # every name is type-checked


def test_union_refuses_to_read_more_than_the_scan_bound(
    store: KeyValueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_SET_SCAN", 10)
    members(store, "a", 6, "a")
    members(store, "b", 4, "b")
    assert len(store.set_union(["a", "b", "b"])) == 10  # exactly at the bound
    members(store, "c", 1, "c")
    with pytest.raises(TooMuchWorkError, match=r"^ERR SetUnion would read 11 members"):
        store.set_union(["a", "b", "c"])


def test_intersection_bounds_membership_tests_from_the_smallest_set(
    store: KeyValueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_SET_SCAN", 10)
    members(store, "big", 1000)
    members(store, "small", 5)
    # 5 members of the smallest, tested against 2 other sets: 10 tests, whatever "big" holds.
    assert sorted(store.set_intersection(["big", "small", "big2", "small"])) == []
    members(store, "big2", 1000)
    assert sorted(store.set_intersection(["big", "small", "big2"])) == [f"m{i}" for i in range(5)]
    members(store, "big3", 1000)
    with pytest.raises(TooMuchWorkError, match=r"^ERR SetIntersection would need 15"):
        store.set_intersection(["big", "small", "big2", "big3"])
    with pytest.raises(TooMuchWorkError, match=r"^ERR SetIntersection would need 1000"):
        store.set_intersection(["big", "big"])  # one distinct set: its members are the result


def test_list_range_is_bounded_in_items_and_bytes(
    store: KeyValueStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "MAX_RESULT_ITEMS", 5)
    for i in range(10):
        store.list_add("l", f"v{i}")
    assert store.list_range("l", 0, 4) == [f"v{i}" for i in range(5)]
    assert store.list_range("l", -5, -1) == [f"v{i}" for i in range(5, 10)]
    assert store.list_range("l", 20, 30) == []
    with pytest.raises(TooMuchWorkError, match=r"^ERR ListRange result would exceed 5 items"):
        store.list_range("l", 0, -1)
    monkeypatch.setattr(store_module, "MAX_RESULT_BYTES", 9)
    assert store.list_range("l", 0, 3) == ["v0", "v1", "v2", "v3"]  # 8 characters
    with pytest.raises(TooMuchWorkError, match=r"^ERR ListRange result would exceed 9 bytes"):
        store.list_range("l", 0, 4)


def test_set_query_is_bounded(store: KeyValueStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "MAX_RESULT_ITEMS", 3)
    members(store, "s", 3)
    assert len(store.set_query("s")) == 3
    store.set_add("s", "one more")
    with pytest.raises(TooMuchWorkError, match=r"^ERR SetQuery result would exceed 3 items"):
        store.set_query("s")


def test_largest_allowed_list_range_is_quick(store: KeyValueStore) -> None:
    """The biggest ListRange the bounds allow, encoded as the reply: well inside the budget."""
    for i in range(MAX_RESULT_ITEMS):
        store.list_add("huge", f"{i:032x}")
    op = OPERATIONS["ListRange"]
    started = time.perf_counter()
    reply, _ = kvservice.execute(store, op, ListRangeRequest("huge", 0, -1))
    elapsed = time.perf_counter() - started
    assert len(msgpack.unpackb(reply)) == MAX_RESULT_ITEMS  # over the client's 1 MiB decode cap
    assert elapsed < 0.2  # ~20 ms here
    with pytest.raises(TooMuchWorkError):
        store.list_add("huge", "one too many")
        kvservice.execute(store, op, ListRangeRequest("huge", 0, -1))


def test_bounds_are_documented_values() -> None:
    """The README's "Limits worth knowing" quotes these numbers."""
    assert (MAX_SET_NAMES_GIVEN, MAX_SET_NAMES, MAX_SET_SCAN, MAX_RESULT_ITEMS) == (
        200_000,
        10_000,
        50_000,
        50_000,
    )
