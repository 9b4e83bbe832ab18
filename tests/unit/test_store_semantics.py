"""provider.store: the Redis-like semantics of every operation on a single replica.

The reference is the contract's §4 (the kvredis mapping): what Redis would answer for the same
command sequence, with the recommended texts for the unspecified corners.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.store import (
    SUB_BUCKETS,
    Change,
    IncrementOverflowError,
    KeyValueStore,
    Kind,
    NotIntegerError,
    StoreError,
    WrongTypeError,
    bucket_of,
    sub_bucket_of,
)
from provider.store.entry import canonical

START_MS = 1_700_000_000_000
WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"
OVERFLOW = "ERR increment or decrement would overflow"
I32_MAX = 2**31 - 1
I32_MIN = -(2**31)


class FakeClock:
    """A settable millisecond clock: ``KeyValueStore(node, now_ms=clock)``."""

    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> KeyValueStore:
    return KeyValueStore("0000000000000000", now_ms=clock)


def snapshot(store: KeyValueStore) -> list:
    """Every stored entry in plain, comparable form."""
    return sorted((key, canonical(entry)) for key, entry in store.items())


def values(store: KeyValueStore, name: str) -> list[str]:
    return store.list_range(name, 0, -1)


# ---------------------------------------------------------------------------- get / set
def test_get_missing_is_none(store: KeyValueStore) -> None:
    assert store.get("nope") is None
    assert not store.contains("nope")


def test_set_then_get_and_overwrite(store: KeyValueStore) -> None:
    change = store.set("color", "blue")
    assert isinstance(change, Change)
    assert change.key == "color"
    assert store.get("color") == "blue"
    store.set("color", "red")
    assert store.get("color") == "red"
    store.set("color", "")
    assert store.get("color") == ""
    assert store.contains("color")  # an empty string is still a value


@pytest.mark.parametrize("container", ["list", "set"])
def test_set_overwrites_a_container(store: KeyValueStore, container: str) -> None:
    if container == "list":
        store.list_add("k", "a")
    else:
        store.set_add("k", "a")
    store.set("k", "plain")
    assert store.get("k") == "plain"
    with pytest.raises(WrongTypeError):
        store.list_range("k", 0, -1)
    with pytest.raises(WrongTypeError):
        store.set_query("k")


@pytest.mark.parametrize("container", ["list", "set"])
def test_get_on_a_container_is_wrongtype(store: KeyValueStore, container: str) -> None:
    if container == "list":
        store.list_add("k", "a")
    else:
        store.set_add("k", "a")
    with pytest.raises(WrongTypeError) as excinfo:
        store.get("k")
    assert str(excinfo.value) == WRONGTYPE
    assert isinstance(excinfo.value, StoreError)


# ---------------------------------------------------------------------------- TTL
def test_expires_is_a_real_ttl(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("k", "v", expires=2)
    clock.advance(1_999)
    assert store.get("k") == "v"
    assert store.contains("k")
    clock.advance(2)
    assert store.get("k") is None
    assert not store.contains("k")
    assert store.live_count() == 0


def test_set_with_zero_clears_a_previous_ttl(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("k", "v", expires=1)
    store.set("k", "w", expires=0)
    clock.advance(10_000)
    assert store.get("k") == "w"


def test_set_with_ttl_replaces_a_longer_ttl(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("k", "v", expires=100)
    store.set("k", "w", expires=1)
    clock.advance(1_001)
    assert store.get("k") is None


def test_increment_keeps_the_ttl(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("counter", "10", expires=2)
    clock.advance(1_000)
    value, change = store.increment("counter", 5)
    assert value == 15
    assert change.entry.deadline == store.entry("counter").deadline > 0
    clock.advance(999)
    assert store.get("counter") == "15"
    clock.advance(2)
    assert store.get("counter") is None


def test_increment_after_expiry_starts_from_zero(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("counter", "10", expires=1)
    clock.advance(1_001)
    assert store.increment("counter", 3)[0] == 3
    clock.advance(100_000)
    assert store.get("counter") == "3"  # the new incarnation has no TTL


def test_sweep_turns_expired_keys_into_tombstones(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("k", "v", expires=1)
    store.set("keep", "v")
    clock.advance(1_001)
    assert store.sweep() == 1
    assert store.entry("k").kind == Kind.TOMBSTONE
    assert store.get("keep") == "v"
    assert store.sweep() == 0


# ---------------------------------------------------------------------------- contains / del
def test_contains_for_every_type(store: KeyValueStore) -> None:
    store.set("s", "v")
    store.list_add("l", "a")
    store.set_add("t", "a")
    assert all(store.contains(key) for key in ("s", "l", "t"))
    assert not store.contains("missing")


CREATE: dict[str, Callable[[KeyValueStore], object]] = {
    "string": lambda s: s.set("k", "v"),
    "list": lambda s: s.list_add("k", "a"),
    "set": lambda s: s.set_add("k", "a"),
}


@pytest.mark.parametrize("kind", sorted(CREATE))
def test_del_returns_true_only_if_the_key_existed(store: KeyValueStore, kind: str) -> None:
    assert store.delete("k") == (False, None)
    CREATE[kind](store)
    existed, change = store.delete("k")
    assert existed
    assert change is not None
    assert change.entry.kind == Kind.TOMBSTONE
    assert not store.contains("k")
    assert store.get("k") is None
    assert store.list_range("k", 0, -1) == []
    assert store.set_query("k") == []
    assert store.delete("k") == (False, None)


def test_deleting_an_expired_key_is_false(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("k", "v", expires=1)
    clock.advance(1_500)
    assert store.delete("k") == (False, None)


def test_deleted_key_can_be_reused_with_any_type(store: KeyValueStore) -> None:
    store.set("k", "v")
    store.delete("k")
    assert store.list_add("k", "a")[0] == 1
    store.delete("k")
    assert store.set_add("k", "a")[0] == 1
    store.delete("k")
    assert store.increment("k", 2)[0] == 2


# ---------------------------------------------------------------------------- increment
def test_increment_missing_counts_as_zero(store: KeyValueStore) -> None:
    value, change = store.increment("c", 7)
    assert value == 7
    assert store.get("c") == "7"
    assert change.key == "c"
    assert store.increment("d", -3)[0] == -3
    assert store.get("d") == "-3"


def test_kvredis_increment_sequence(store: KeyValueStore) -> None:
    store.set("counter", "0")
    assert store.increment("counter", 25)[0] == 25
    assert store.get("counter") == "25"
    assert store.increment("counter", -5)[0] == 20
    assert store.get("counter") == "20"


def test_set_after_increments_replaces_the_counter(store: KeyValueStore) -> None:
    store.increment("c", 5)
    store.set("c", "100")
    assert store.get("c") == "100"
    assert store.increment("c", 1)[0] == 101


@pytest.mark.parametrize("text", ["-7", "0", "-2147483647", "2147483646"])
def test_increment_accepts_integer_strings(store: KeyValueStore, text: str) -> None:
    store.set("k", text)
    assert store.increment("k", 1)[0] == int(text) + 1
    assert store.get("k") == str(int(text) + 1)


@pytest.mark.parametrize(
    "text", [" 5", "5 ", "1_0", "", "abc", "1.5", "1e3", "0x10", "--1", "5\n", "\u0663", "- 1"]
)
def test_increment_rejects_non_integers(store: KeyValueStore, text: str) -> None:
    store.set("k", text)
    before = snapshot(store)
    with pytest.raises(NotIntegerError) as excinfo:
        store.increment("k", 1)
    assert str(excinfo.value) == NOT_INTEGER
    assert snapshot(store) == before
    assert store.get("k") == text


@pytest.mark.parametrize(
    ("start", "delta"),
    [(str(I32_MAX), 1), (str(I32_MIN), -1), ("1", I32_MAX), ("-2", I32_MIN), ("2000000000", 2**30)],
)
def test_increment_overflow_is_refused_and_changes_nothing(
    store: KeyValueStore, start: str, delta: int
) -> None:
    store.set("k", start)
    assert not I32_MIN <= int(start) + delta <= I32_MAX
    before = snapshot(store)
    with pytest.raises(IncrementOverflowError) as excinfo:
        store.increment("k", delta)
    assert str(excinfo.value) == OVERFLOW
    assert snapshot(store) == before
    assert store.get("k") == start


def test_increment_overflow_on_a_counter_built_by_increments(store: KeyValueStore) -> None:
    store.increment("k", I32_MAX)
    before = snapshot(store)
    with pytest.raises(IncrementOverflowError):
        store.increment("k", 1)
    assert snapshot(store) == before
    assert store.get("k") == str(I32_MAX)
    assert store.increment("k", -1)[0] == I32_MAX - 1


def test_increment_overflow_on_a_missing_key_creates_nothing(store: KeyValueStore) -> None:
    store.increment("k", I32_MAX)
    store.delete("k")
    before = snapshot(store)
    with pytest.raises(IncrementOverflowError):
        store.increment("other", I32_MAX + 1)
    assert snapshot(store) == before
    assert not store.contains("other")


@pytest.mark.parametrize("container", ["list", "set"])
def test_increment_on_a_container_is_wrongtype(store: KeyValueStore, container: str) -> None:
    if container == "list":
        store.list_add("k", "1")
    else:
        store.set_add("k", "1")
    before = snapshot(store)
    with pytest.raises(WrongTypeError) as excinfo:
        store.increment("k", 1)
    assert str(excinfo.value) == WRONGTYPE
    assert snapshot(store) == before


# ---------------------------------------------------------------------------- lists
def spec_lrange(items: list[str], start: int, stop: int) -> list[str]:
    """The contract's §4 formula, written out literally."""
    n = len(items)
    first = max(n + start, 0) if start < 0 else start
    last = n + stop if stop < 0 else min(stop, n - 1)
    if first > last or first >= n:
        return []
    return items[first : last + 1]


def redis_lrange(items: list[str], start: int, stop: int) -> list[str]:
    """Redis' own lrangeGenericCommand, step by step."""
    n = len(items)
    if start < 0:
        start = n + start
    if stop < 0:
        stop = n + stop
    if start < 0:
        start = 0
    if start > stop or start >= n:
        return []
    if stop >= n:
        stop = n - 1
    return items[start : stop + 1]


def test_list_add_returns_the_new_length_and_appends_at_the_tail(store: KeyValueStore) -> None:
    assert [store.list_add("fruit", v)[0] for v in ("apple", "banana", "apple")] == [1, 2, 3]
    assert values(store, "fruit") == ["apple", "banana", "apple"]


def test_list_range_examples(store: KeyValueStore) -> None:
    for v in "abcde":
        store.list_add("l", v)
    assert store.list_range("l", 0, -1) == list("abcde")
    assert store.list_range("l", 1, 2) == ["b", "c"]
    assert store.list_range("l", -2, -1) == ["d", "e"]
    assert store.list_range("l", -100, 1) == ["a", "b"]
    assert store.list_range("l", 3, 100) == ["d", "e"]
    assert store.list_range("l", 5, 10) == []
    assert store.list_range("l", 3, 2) == []
    assert store.list_range("l", -1, -2) == []
    assert store.list_range("l", 0, -6) == []
    assert store.list_range("l", 0, 0) == ["a"]
    assert store.list_range("missing", 0, -1) == []


def test_kvredis_list_range_past_the_end(store: KeyValueStore) -> None:
    store.list_add("l", "a")
    store.list_add("l", "b")
    assert store.list_range("l", 0, 100) == ["a", "b"]


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(st.sampled_from("abc"), max_size=8),
    start=st.integers(-12, 12) | st.sampled_from([I32_MIN, I32_MAX]),
    stop=st.integers(-12, 12) | st.sampled_from([I32_MIN, I32_MAX]),
)
def test_list_range_matches_the_spec_formula(items: list[str], start: int, stop: int) -> None:
    store = KeyValueStore("0000000000000000", now_ms=FakeClock())
    for item in items:
        store.list_add("l", item)
    expected = spec_lrange(items, start, stop)
    assert expected == redis_lrange(items, start, stop)
    assert store.list_range("l", start, stop) == expected


def test_list_del_removes_the_first_occurrence_only(store: KeyValueStore) -> None:
    for v in ("a", "b", "a", "c", "a"):
        store.list_add("l", v)
    existed, change = store.list_del("l", "a")
    assert existed
    assert change is not None
    assert values(store, "l") == ["b", "a", "c", "a"]
    assert store.list_del("l", "a")[0]
    assert values(store, "l") == ["b", "c", "a"]
    assert store.list_del("l", "zzz") == (False, None)
    assert values(store, "l") == ["b", "c", "a"]


def test_list_del_on_a_missing_list_is_false(store: KeyValueStore) -> None:
    assert store.list_del("nope", "a") == (False, None)
    assert len(store) == 0


def test_a_list_emptied_by_list_del_disappears(store: KeyValueStore) -> None:
    store.list_add("l", "a")
    store.list_add("l", "b")
    store.list_del("l", "b")
    store.list_del("l", "a")
    assert not store.contains("l")
    assert store.list_range("l", 0, -1) == []
    assert store.get("l") is None  # absent, not WRONGTYPE
    assert store.set_query("l") == []
    assert store.delete("l") == (False, None)
    assert store.list_add("l", "c")[0] == 1
    assert store.list_add("l", "d")[0] == 2
    assert values(store, "l") == ["c", "d"]


def test_an_emptied_list_can_be_incremented(store: KeyValueStore) -> None:
    store.list_add("l", "a")
    store.list_del("l", "a")
    assert store.increment("l", 4)[0] == 4
    assert store.get("l") == "4"


def test_an_emptied_list_can_become_a_set(store: KeyValueStore) -> None:
    store.list_add("l", "a")
    store.list_del("l", "a")
    assert store.set_add("l", "x")[0] == 1
    assert store.set_query("l") == ["x"]


@pytest.mark.parametrize("op", ["list_add", "list_del", "list_range"])
@pytest.mark.parametrize("holder", ["string", "set"])
def test_list_ops_on_other_types_are_wrongtype(store: KeyValueStore, op: str, holder: str) -> None:
    if holder == "string":
        store.set("k", "v")
    else:
        store.set_add("k", "v")
    before = snapshot(store)
    call: Callable[[], object] = {
        "list_add": lambda: store.list_add("k", "v"),
        "list_del": lambda: store.list_del("k", "v"),
        "list_range": lambda: store.list_range("k", 0, -1),
    }[op]
    with pytest.raises(WrongTypeError) as excinfo:
        call()
    assert str(excinfo.value) == WRONGTYPE
    assert snapshot(store) == before


# ---------------------------------------------------------------------------- sets
def test_set_add_and_set_del_counts(store: KeyValueStore) -> None:
    assert store.set_add("s", "a")[0] == 1
    assert store.set_add("s", "a") == (0, None)
    assert store.set_add("s", "b")[0] == 1
    assert sorted(store.set_query("s")) == ["a", "b"]
    removed, change = store.set_del("s", "a")
    assert removed == 1
    assert change is not None
    assert store.set_del("s", "a") == (0, None)
    assert store.set_del("s", "never") == (0, None)
    assert store.set_query("s") == ["b"]


def test_set_del_on_a_missing_set_is_zero(store: KeyValueStore) -> None:
    assert store.set_del("nope", "a") == (0, None)
    assert len(store) == 0


def test_an_emptied_set_disappears_and_can_be_reused(store: KeyValueStore) -> None:
    store.set_add("s", "a")
    store.set_del("s", "a")
    assert not store.contains("s")
    assert store.set_query("s") == []
    assert store.get("s") is None
    assert store.delete("s") == (False, None)
    assert store.set_intersection(["s"]) == []
    assert store.set_add("s", "a")[0] == 1
    assert store.set_query("s") == ["a"]


def test_union_and_intersection(store: KeyValueStore) -> None:
    for member in ("a", "b", "c"):
        store.set_add("x", member)
    for member in ("b", "c", "d"):
        store.set_add("y", member)
    assert sorted(store.set_union(["x", "y"])) == ["a", "b", "c", "d"]
    assert sorted(store.set_union(["x", "y", "missing"])) == ["a", "b", "c", "d"]
    assert sorted(store.set_union(["missing", "x"])) == ["a", "b", "c"]
    assert store.set_union(["missing"]) == []
    assert sorted(store.set_intersection(["x", "y"])) == ["b", "c"]
    assert sorted(store.set_intersection(["x", "x"])) == ["a", "b", "c"]
    assert store.set_intersection(["x", "y", "missing"]) == []
    assert store.set_intersection(["missing", "x"]) == []
    assert store.set_union([]) == []
    assert store.set_intersection([]) == []
    union = store.set_union(["x", "y", "x"])
    assert len(union) == len(set(union))


@pytest.mark.parametrize("holder", ["string", "list"])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_union_and_intersection_refuse_a_wrong_type_anywhere(
    store: KeyValueStore, holder: str, position: int
) -> None:
    store.set_add("x", "a")
    if holder == "string":
        store.set("bad", "v")
    else:
        store.list_add("bad", "a")
    names = ["x", "missing"]
    names.insert(position, "bad")
    before = snapshot(store)
    with pytest.raises(WrongTypeError) as excinfo:
        store.set_union(names)
    assert str(excinfo.value) == WRONGTYPE
    with pytest.raises(WrongTypeError):
        store.set_intersection(names)
    assert snapshot(store) == before


@pytest.mark.parametrize("op", ["set_add", "set_del", "set_query"])
@pytest.mark.parametrize("holder", ["string", "list"])
def test_set_ops_on_other_types_are_wrongtype(store: KeyValueStore, op: str, holder: str) -> None:
    if holder == "string":
        store.set("k", "v")
    else:
        store.list_add("k", "v")
    before = snapshot(store)
    call: Callable[[], object] = {
        "set_add": lambda: store.set_add("k", "v"),
        "set_del": lambda: store.set_del("k", "v"),
        "set_query": lambda: store.set_query("k"),
    }[op]
    with pytest.raises(WrongTypeError) as excinfo:
        call()
    assert str(excinfo.value) == WRONGTYPE
    assert snapshot(store) == before


def test_expired_string_is_absent_for_every_type(store: KeyValueStore, clock: FakeClock) -> None:
    store.set("k", "v", expires=1)
    clock.advance(1_001)
    assert store.list_range("k", 0, -1) == []
    assert store.set_query("k") == []
    assert store.set_union(["k"]) == []
    assert store.list_add("k", "a")[0] == 1
    assert values(store, "k") == ["a"]


# ---------------------------------------------------------------------------- refusals
REFUSALS: dict[str, Callable[[KeyValueStore], object]] = {
    "get list": lambda s: s.get("list"),
    "get set": lambda s: s.get("set"),
    "increment list": lambda s: s.increment("list", 1),
    "increment set": lambda s: s.increment("set", 1),
    "increment text": lambda s: s.increment("text", 1),
    "increment overflow": lambda s: s.increment("num", I32_MAX),
    "list_add string": lambda s: s.list_add("text", "a"),
    "list_add set": lambda s: s.list_add("set", "a"),
    "list_del string": lambda s: s.list_del("num", "a"),
    "list_range set": lambda s: s.list_range("set", 0, -1),
    "set_add list": lambda s: s.set_add("list", "a"),
    "set_add string": lambda s: s.set_add("text", "a"),
    "set_del list": lambda s: s.set_del("list", "a"),
    "set_query string": lambda s: s.set_query("num"),
    "set_union list": lambda s: s.set_union(["set", "list"]),
    "set_intersection string": lambda s: s.set_intersection(["set", "missing", "text"]),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_refused_operation_changes_nothing(store: KeyValueStore, name: str) -> None:
    store.set("text", "hello")
    store.set("num", "5", expires=60)
    store.increment("num", 2)
    store.list_add("list", "a")
    store.list_add("list", "b")
    store.set_add("set", "a")
    store.set("gone", "x")
    store.delete("gone")
    before = snapshot(store)
    clock_before = store.clock.last
    with pytest.raises(StoreError):
        REFUSALS[name](store)
    assert snapshot(store) == before
    assert store.clock.last == clock_before


# ---------------------------------------------------------------------------- changes
def visible(store: KeyValueStore, key: str) -> tuple:
    def read(call: Callable[[], object]) -> object:
        try:
            return call()
        except WrongTypeError:
            return "WRONGTYPE"

    return (
        store.contains(key),
        read(lambda: store.get(key)),
        read(lambda: store.list_range(key, 0, -1)),
        read(lambda: sorted(store.set_query(key))),
    )


FIRST_MUTATIONS: dict[str, Callable[[KeyValueStore], Change | None]] = {
    "set": lambda s: s.set("k", "v"),
    "set with ttl": lambda s: s.set("k", "v", expires=5),
    "increment": lambda s: s.increment("k", 3)[1],
    "list_add": lambda s: s.list_add("k", "a")[1],
    "set_add": lambda s: s.set_add("k", "a")[1],
}


@pytest.mark.parametrize("name", sorted(FIRST_MUTATIONS))
def test_the_change_of_a_first_mutation_reproduces_it(clock: FakeClock, name: str) -> None:
    origin = KeyValueStore("0000000000000000", now_ms=clock)
    change = FIRST_MUTATIONS[name](origin)
    assert change is not None
    replica = KeyValueStore("0000000000000001", now_ms=clock)
    replica.apply(change)
    assert visible(replica, "k") == visible(origin, "k")
    assert canonical(replica.entry("k")) == canonical(origin.entry("k"))
    clock.advance(6_000)  # past the TTL, if any
    assert visible(replica, "k") == visible(origin, "k")


def test_every_change_replays_the_history_on_a_fresh_replica(clock: FakeClock) -> None:
    origin = KeyValueStore("0000000000000000", now_ms=clock)
    replica = KeyValueStore("0000000000000001", now_ms=clock)
    steps: list[Callable[[], Change | None]] = [
        lambda: origin.set("k", "1", expires=30),
        lambda: origin.increment("k", 4)[1],
        lambda: origin.delete("k")[1],
        lambda: origin.list_add("k", "a")[1],
        lambda: origin.list_add("k", "b")[1],
        lambda: origin.list_del("k", "a")[1],
        lambda: origin.list_del("k", "b")[1],
        lambda: origin.increment("k", 2)[1],
        lambda: origin.delete("k")[1],
        lambda: origin.set_add("k", "m")[1],
        lambda: origin.set_add("k", "n")[1],
        lambda: origin.set_del("k", "m")[1],
        lambda: origin.set("k", "final"),
    ]
    for step in steps:
        change = step()
        assert change is not None
        replica.apply(change)
        assert visible(replica, "k") == visible(origin, "k")
        assert canonical(replica.entry("k")) == canonical(origin.entry("k"))
        clock.advance(10)


def test_reads_produce_no_state(store: KeyValueStore) -> None:
    store.get("a")
    store.contains("b")
    store.list_range("c", 0, -1)
    store.set_query("d")
    store.set_union(["e", "f"])
    store.set_intersection(["g"])
    assert len(store) == 0


def test_replicating_store_tombstones_a_delete_that_overtakes_its_value() -> None:
    """A Del reaching a replica before the write it deletes still wins when the write lands."""
    # The delete happens after the write (a later wall clock), but reaches its replica first.
    writer = KeyValueStore("w", now_ms=lambda: 1_000_000)
    deleter = KeyValueStore("d", now_ms=lambda: 1_000_005)
    deleter.tombstone_absent_keys = True
    write = writer.set("k", "v")
    existed, tombstone = deleter.delete("k")
    assert existed is False and tombstone is not None
    deleter.apply(write)
    writer.apply(tombstone)
    assert deleter.get("k") is None and writer.get("k") is None


def test_standalone_store_writes_no_tombstone_for_a_missing_key() -> None:
    store = KeyValueStore("s")
    assert store.delete("missing") == (False, None)
    assert store.entry("missing") is None


def test_sub_bucket_digests_partition_the_bucket_digest() -> None:
    """Repair compares sub-bucket digests: together they must say exactly what the bucket says."""
    store = KeyValueStore("n")
    digests = store.track_digests()
    for i in range(3000):
        store.set(f"key:{i}", str(i))
    store.list_add("list", "a")
    store.set_add("set", "m")
    for index in (bucket_of("key:1"), bucket_of("list"), bucket_of("set")):
        subs = store.sub_digests(index)
        combined = 0
        for sub in subs:
            combined ^= sub
        assert combined == digests[index]
        everything = store.bucket_items(index)
        parts = [store.sub_bucket_items(index, {sub}) for sub in range(SUB_BUCKETS)]
        assert sorted(k for part in parts for k, _ in part) == sorted(k for k, _ in everything)
        assert all(sub_bucket_of(k) == sub for sub, part in enumerate(parts) for k, _ in part)
