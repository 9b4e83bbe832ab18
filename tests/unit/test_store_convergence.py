"""provider.store: replicas converge whatever the delivery order, duplication or loss.

This is the product's core claim. Random operation histories run on 2-4 replicas sharing one
fake clock; every produced :class:`Change` goes through the wire codec and is delivered to
random replicas at random moments (so later operations see some remote state and not other),
then everything is delivered everywhere in a different shuffled order per replica, with
duplicates. All replicas must end in the same state, stored and visible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.store import BUCKETS, Change, KeyValueStore, StoreError, WrongTypeError
from provider.store.codec import decode_change, encode_change
from provider.store.entry import Entry, Kind, canonical, merge

START_MS = 1_700_000_000_000
NO_FORGETTING = 10**15  # a tombstone horizon no test history reaches
KEYS = ("a", "b", "c")
VALUES = ("x", "y", "1", "7")
MUTATIONS = (
    "set",
    "set_ttl",
    "delete",
    "increment",
    "list_add",
    "list_del",
    "set_add",
    "set_del",
)
WRONG = "WRONGTYPE"
SETTINGS = settings(max_examples=150, deadline=None)


class FakeClock:
    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def wire(change: Change) -> Change:
    """The change as a peer receives it: encoded, packed, unpacked, decoded."""
    return decode_change(msgpack.unpackb(msgpack.packb(encode_change(change))))


def mutate(store: KeyValueStore, op: str, key: str, value: str, number: int) -> Change | None:
    """Run one mutation; a refusal (StoreError) produces no change."""
    try:
        if op == "set":
            return store.set(key, value)
        if op == "set_ttl":
            return store.set(key, value, expires=number)
        if op == "delete":
            return store.delete(key)[1]
        if op == "increment":
            return store.increment(key, number)[1]
        if op == "list_add":
            return store.list_add(key, value)[1]
        if op == "list_del":
            return store.list_del(key, value)[1]
        if op == "set_add":
            return store.set_add(key, value)[1]
        if op == "set_del":
            return store.set_del(key, value)[1]
    except StoreError:
        return None
    raise AssertionError(op)


def read(call: Callable[[], object]) -> object:
    try:
        return call()
    except WrongTypeError:
        return WRONG


def visible(store: KeyValueStore) -> dict[str, tuple]:
    """What a client can observe, per key."""
    return {
        key: (
            store.contains(key),
            read(lambda key=key: store.get(key)),
            read(lambda key=key: store.list_range(key, 0, -1)),
            read(lambda key=key: sorted(store.set_query(key))),
        )
        for key in KEYS
    }


def stored(store: KeyValueStore) -> dict[str, list]:
    """Every stored entry (tombstones included) in canonical form."""
    return {key: canonical(entry) for key, entry in store.items()}


def rebuilt_digests(store: KeyValueStore) -> list[int]:
    """Bucket digests of a fresh store built from ``store``'s items."""
    fresh = KeyValueStore(
        "00000000000000fe", now_ms=store._now_ms, tombstone_horizon_ms=NO_FORGETTING
    )
    for key, entry in store.items():
        fresh.apply(Change(key, entry))
    return list(fresh.track_digests())


@dataclass
class Cluster:
    size: int
    horizon: int = NO_FORGETTING
    clock: FakeClock = field(default_factory=FakeClock)
    replicas: list[KeyValueStore] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.replicas = [
            KeyValueStore(f"{i:016x}", now_ms=self.clock, tombstone_horizon_ms=self.horizon)
            for i in range(self.size)
        ]

    def deliver(self, replica: KeyValueStore, change: Change) -> None:
        replica.apply(wire(change))

    def deliver_everything(self, data: st.DataObject, loss: bool = False) -> None:
        """Every change to every replica, each in its own shuffled order with duplicates."""
        count = len(self.changes)
        for replica in self.replicas:
            rnd = data.draw(st.randoms(use_true_random=False), label="final order")
            order = list(range(count))
            if loss:
                order = [i for i in order if rnd.random() < 0.5]
            if count:
                order += rnd.choices(range(count), k=rnd.randint(0, count))
            rnd.shuffle(order)
            for index in order:
                self.deliver(replica, self.changes[index])

    def anti_entropy(self) -> None:
        """Every replica's full state applied to every other replica."""
        for source in self.replicas:
            state = [Change(key, entry.copy()) for key, entry in source.items()]
            for target in self.replicas:
                if target is not source:
                    for change in state:
                        self.deliver(target, change)

    def sweep_all(self) -> None:
        for replica in self.replicas:
            replica.sweep()

    def assert_converged(self) -> None:
        first, *rest = self.replicas
        expected_visible = visible(first)
        for replica in rest:
            assert visible(replica) == expected_visible, replica.node_id
        self.sweep_all()  # expired entries become the same tombstone everywhere
        expected_stored = stored(first)
        for replica in rest:
            assert stored(replica) == expected_stored, replica.node_id
            assert visible(replica) == expected_visible, replica.node_id


#: Each key mostly holds one type, so containers grow concurrent state instead of being reset
#: by the next Set; the other keys still see every cross-type race.
HOME = {"set": "a", "set_ttl": "a", "delete": "a", "increment": "a"}
HOME |= {"list_add": "b", "list_del": "b", "set_add": "c", "set_del": "c"}
WEIGHTED = ("set", "set_ttl", "delete", *3 * ["increment"], *3 * MUTATIONS[4:])


@st.composite
def ops(draw: st.DrawFn) -> tuple[str, str, str]:
    op = draw(st.sampled_from(WEIGHTED))
    key = HOME[op] if draw(st.integers(0, 9)) < 7 else draw(st.sampled_from(KEYS))
    return op, key, draw(st.sampled_from(VALUES))


def random_history(
    data: st.DataObject,
    cluster: Cluster,
    max_steps: int = 40,
    on_step: Callable[[], None] | None = None,
    sweeps: bool = True,
) -> None:
    """Random mutations on random replicas, interleaved with deliveries, ticks and sweeps."""
    steps = data.draw(st.integers(1, max_steps), label="steps")
    last = cluster.size - 1
    for _ in range(steps):
        action = data.draw(st.integers(0, 9), label="action")
        if action <= 5:  # a mutation
            replica = cluster.replicas[data.draw(st.integers(0, last), label="replica")]
            op, key, value = data.draw(ops(), label="op")
            number = data.draw(
                st.integers(1, 2) if op == "set_ttl" else st.integers(-3, 3), label="number"
            )
            change = mutate(replica, op, key, value, number)
            if change is not None:
                cluster.changes.append(change)
        elif action <= 7 and cluster.changes:  # deliver some changes to one replica
            replica = cluster.replicas[data.draw(st.integers(0, last), label="to")]
            picks = data.draw(
                st.lists(st.integers(0, len(cluster.changes) - 1), max_size=8), label="deliver"
            )
            for index in picks:
                cluster.deliver(replica, cluster.changes[index])
        elif action == 8:  # time passes; TTLs may run out
            cluster.clock.now += data.draw(st.integers(0, 2_500), label="tick")
        elif sweeps:
            cluster.replicas[data.draw(st.integers(0, last), label="sweep")].sweep()
        if on_step is not None:
            on_step()


# ---------------------------------------------------------------------------- convergence
@SETTINGS
@given(size=st.integers(2, 4), data=st.data())
def test_replicas_converge_after_full_delivery(size: int, data: st.DataObject) -> None:
    cluster = Cluster(size)
    random_history(data, cluster)
    cluster.deliver_everything(data)
    cluster.assert_converged()
    cluster.clock.now += 3_000  # every TTL has run out now
    cluster.assert_converged()


@SETTINGS
@given(size=st.integers(2, 4), data=st.data())
def test_loss_is_repaired_by_anti_entropy(size: int, data: st.DataObject) -> None:
    cluster = Cluster(size)
    random_history(data, cluster)
    cluster.deliver_everything(data, loss=True)
    cluster.anti_entropy()
    cluster.assert_converged()


@SETTINGS
@given(size=st.integers(2, 4), data=st.data())
def test_anti_entropy_alone_converges(size: int, data: st.DataObject) -> None:
    cluster = Cluster(size)
    random_history(data, cluster)
    cluster.anti_entropy()
    cluster.assert_converged()


# ---------------------------------------------------------------------------- merge laws
def entry_pool(data: st.DataObject) -> dict[str, list[Entry]]:
    """Per key, the entries a real history produces: deltas, and replicas' partial states.

    Only entries of one key may be merged: dots are minted per key, so two keys' entries with
    equal births can carry the same dot for different items.
    """
    cluster = Cluster(data.draw(st.integers(2, 3), label="size"))
    random_history(data, cluster, max_steps=30)
    pool: dict[str, list[Entry]] = {}
    for change in cluster.changes:
        pool.setdefault(change.key, []).append(change.entry)
    for replica in cluster.replicas:
        for key, entry in replica.items():
            pool.setdefault(key, []).append(entry.copy())
    return pool


def merged(*entries: Entry) -> list:
    result: Entry | None = None
    for entry in entries:
        result = merge(result.copy() if result is not None else None, entry)
    assert result is not None
    return canonical(result)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_merge_is_commutative_associative_and_idempotent(data: st.DataObject) -> None:
    pool = entry_pool(data)
    if not pool:
        return
    for _ in range(10):
        pick = st.sampled_from(pool[data.draw(st.sampled_from(sorted(pool)), label="key")])
        x, y, z = data.draw(pick), data.draw(pick), data.draw(pick)
        before = [canonical(e) for e in (x, y, z)]
        assert merged(x, x) == canonical(x)
        assert merged(x, y) == merged(y, x)
        assert merged(x, y, z) == merged(x, merge(y.copy(), z))
        assert merged(x, y, z) == merged(z, y, x)
        assert merged(x, y, x) == merged(x, y)
        assert [canonical(e) for e in (x, y, z)] == before  # incoming is never mutated


# ---------------------------------------------------------------------------- counters
@SETTINGS
@given(
    size=st.integers(2, 4),
    from_set=st.booleans(),
    increments=st.lists(
        st.tuples(st.integers(0, 3), st.integers(-5, 5), st.booleans()), max_size=30
    ),
    data=st.data(),
)
def test_counters_are_exact(
    size: int,
    from_set: bool,
    increments: list[tuple[int, int, bool]],
    data: st.DataObject,
) -> None:
    cluster = Cluster(size)
    if from_set:
        base = cluster.replicas[0].set("c", "0")
        for replica in cluster.replicas[1:]:
            cluster.deliver(replica, base)
    total = 0
    for who, delta, share in increments:
        replica = cluster.replicas[who % size]
        _, change = replica.increment("c", delta)
        total += delta
        cluster.changes.append(change)
        if share:  # let someone else see a random earlier increment
            other = cluster.replicas[data.draw(st.integers(0, size - 1), label="peer")]
            cluster.deliver(other, data.draw(st.sampled_from(cluster.changes), label="which"))
    cluster.deliver_everything(data)
    for replica in cluster.replicas:
        expected = str(total) if (increments or from_set) else None
        assert replica.get("c") == expected
    cluster.assert_converged()


# ---------------------------------------------------------------------------- last writer wins
@SETTINGS
@given(size=st.integers(2, 4), ticks=st.lists(st.integers(0, 3), min_size=4), data=st.data())
def test_concurrent_sets_pick_one_winner_everywhere(
    size: int, ticks: list[int], data: st.DataObject
) -> None:
    cluster = Cluster(size)
    for index, replica in enumerate(cluster.replicas):
        cluster.clock.now += ticks[index]  # 0 → equal milliseconds, origin breaks the tie
        cluster.changes.append(replica.set("k", f"from-{replica.node_id}"))
    cluster.deliver_everything(data)
    winner = max(cluster.changes, key=lambda change: change.entry.rank())
    for replica in cluster.replicas:
        assert replica.get("k") == winner.entry.value
    cluster.assert_converged()


# ---------------------------------------------------------------------------- add-wins sets
@SETTINGS
@given(size=st.integers(2, 4), others=st.sets(st.sampled_from("pqr")), data=st.data())
def test_a_concurrent_add_beats_a_remove(size: int, others: set[str], data: st.DataObject) -> None:
    cluster = Cluster(size)
    adder, deleter = cluster.replicas[0], cluster.replicas[1]
    for member in ["m", *sorted(others)]:
        cluster.changes.append(adder.set_add("s", member)[1])
    for change in cluster.changes:  # everybody has seen m
        for replica in cluster.replicas[1:]:
            cluster.deliver(replica, change)
    # The adder removes and re-adds m (a new add); concurrently the deleter removes the m it saw.
    cluster.changes.append(adder.set_del("s", "m")[1])
    cluster.changes.append(adder.set_add("s", "m")[1])
    cluster.changes.append(deleter.set_del("s", "m")[1])
    cluster.deliver_everything(data)
    for replica in cluster.replicas:
        assert sorted(replica.set_query("s")) == sorted({"m", *others})
    cluster.assert_converged()


@SETTINGS
@given(size=st.integers(2, 4), data=st.data())
def test_a_remove_of_an_observed_add_wins(size: int, data: st.DataObject) -> None:
    cluster = Cluster(size)
    adder, deleter = cluster.replicas[0], cluster.replicas[1]
    added = adder.set_add("s", "m")[1]
    cluster.changes.append(added)
    cluster.deliver(deleter, added)
    cluster.changes.append(deleter.set_del("s", "m")[1])
    cluster.deliver_everything(data)
    for replica in cluster.replicas:
        assert replica.set_query("s") == []
        assert not replica.contains("s")
    cluster.assert_converged()


# ---------------------------------------------------------------------------- lists
@SETTINGS
@given(
    size=st.integers(2, 4),
    base=st.lists(st.sampled_from("ab"), max_size=3),
    appends=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=12),
    data=st.data(),
)
def test_concurrent_appends_are_all_kept_in_one_order(
    size: int, base: list[str], appends: list[tuple[int, int]], data: st.DataObject
) -> None:
    cluster = Cluster(size)
    for value in base:
        cluster.changes.append(cluster.replicas[0].list_add("l", value)[1])
    for change in cluster.changes:
        for replica in cluster.replicas[1:]:
            cluster.deliver(replica, change)
    own: dict[str, list[str]] = {replica.node_id: [] for replica in cluster.replicas}
    for index, (who, tick) in enumerate(appends):
        replica = cluster.replicas[who % size]
        cluster.clock.now += tick
        value = f"{replica.node_id}-{index}"
        own[replica.node_id].append(value)
        cluster.changes.append(replica.list_add("l", value)[1])
    cluster.deliver_everything(data)
    final = cluster.replicas[0].list_range("l", 0, -1)
    assert final[: len(base)] == base
    assert sorted(final[len(base) :]) == sorted(v for values in own.values() for v in values)
    for values in own.values():  # each replica's own appends keep their local order
        assert [v for v in final if v in values] == values
    for replica in cluster.replicas:
        assert replica.list_range("l", 0, -1) == final
    cluster.assert_converged()


@SETTINGS
@given(size=st.integers(2, 3), data=st.data())
def test_lists_observe_remote_appends_before_appending(size: int, data: st.DataObject) -> None:
    """An append made after seeing another one is ordered after it on every replica."""
    cluster = Cluster(size)
    expected: list[str] = []
    for index in range(data.draw(st.integers(1, 8), label="appends")):
        replica = cluster.replicas[data.draw(st.integers(0, size - 1), label="who")]
        change = replica.list_add("l", f"v{index}")[1]
        cluster.changes.append(change)
        for other in cluster.replicas:  # delivered everywhere before the next append
            cluster.deliver(other, change)
        expected.append(f"v{index}")
        if data.draw(st.booleans(), label="clock goes back"):
            cluster.clock.now -= 5  # an HLC still orders causally later appends later
    cluster.deliver_everything(data)
    for replica in cluster.replicas:
        assert replica.list_range("l", 0, -1) == expected


# ---------------------------------------------------------------------------- digests
@SETTINGS
@given(size=st.integers(2, 4), data=st.data())
def test_bucket_digests_track_state_exactly(size: int, data: st.DataObject) -> None:
    cluster = Cluster(size)
    early = data.draw(st.sets(st.integers(0, size - 1)), label="track from the start")
    for index in early:
        cluster.replicas[index].track_digests()

    def check() -> None:
        if data.draw(st.integers(0, 4), label="turn one on") == 0:
            cluster.replicas[data.draw(st.integers(0, size - 1), label="late")].track_digests()
        states = []
        for replica in cluster.replicas:
            if replica._digests is not None:
                assert list(replica._digests) == rebuilt_digests(replica)
            states.append((stored(replica), list(replica.track_digests())))
        for state, digests in states:
            for other_state, other_digests in states:
                assert (state == other_state) == (digests == other_digests)

    random_history(data, cluster, max_steps=25, on_step=check)
    cluster.deliver_everything(data)
    cluster.sweep_all()
    check()
    digests = [list(replica.track_digests()) for replica in cluster.replicas]
    assert all(d == digests[0] for d in digests)
    assert len(digests[0]) == BUCKETS


# ---------------------------------------------------------------------------- horizon
def test_tombstones_are_kept_until_the_horizon_then_forgotten() -> None:
    clock = FakeClock()
    store = KeyValueStore("0000000000000000", now_ms=clock, tombstone_horizon_ms=10_000)
    old = store.set("k", "v")
    store.delete("k")
    clock.now += 9_000
    store.sweep()
    assert store.entry("k").kind == Kind.TOMBSTONE
    store.apply(old)  # a late replay does not resurrect the deleted key
    assert store.get("k") is None
    clock.now += 2_000
    assert store.sweep() == 1
    assert len(store) == 0
    store.apply(old)  # past the horizon it would: that is the documented trade-off
    assert store.get("k") == "v"


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 3), data=st.data())
def test_forgetting_after_full_delivery_keeps_replicas_converged(
    size: int, data: st.DataObject
) -> None:
    """With a short horizon: once everything is delivered, forgetting everywhere agrees."""
    cluster = Cluster(size, horizon=5_000)
    cluster.clock.now = 1_000  # implicitly created keys are born at stamp 0
    random_history(data, cluster, max_steps=25, sweeps=False)
    cluster.deliver_everything(data)
    cluster.clock.now += 5_000 + 2_000 * 40  # past every TTL and every horizon
    cluster.assert_converged()
    for replica in cluster.replicas:
        replica.sweep()  # the tombstones made by expiry are now forgotten as well
        assert all(entry.kind != Kind.TOMBSTONE for _, entry in replica.items())
    assert stored(cluster.replicas[0]) == stored(cluster.replicas[-1])


@pytest.mark.parametrize("born", ["implicitly", "after a delete"])
@pytest.mark.parametrize("kind", ["list", "set"])
def test_an_emptied_container_is_not_forgotten(kind: str, born: str) -> None:
    """Queue pattern: add, remove, one replica sweeps, add. The second add must survive.

    Sweep used to forget emptied containers by their *birth* stamp (0 for one created by the
    first ListAdd/SetAdd), i.e. right after they were emptied. The next add then re-created the
    key from nothing and the replica that had not swept yet dropped it.
    """
    clock = FakeClock()
    a, b = (
        KeyValueStore(n, now_ms=clock, tombstone_horizon_ms=10_000)
        for n in ("0000000000000000", "0000000000000001")
    )
    add, remove, read = {
        "list": (a.list_add, a.list_del, lambda s: s.list_range("q", 0, -1)),
        "set": (a.set_add, a.set_del, lambda s: sorted(s.set_query("q"))),
    }[kind]
    changes = [a.set("q", "v"), a.delete("q")[1]] if born == "after a delete" else []
    changes.append(add("q", "x")[1])
    clock.now += 20_000  # the birth is older than the horizon
    changes.append(remove("q", "x")[1])
    for change in changes:
        b.apply(wire(change))
    a.sweep()  # one replica sweeps before the other
    b.apply(wire(add("q", "y")[1]))
    assert read(a) == read(b) == ["y"]
    for key, entry in b.items():  # anti-entropy from the replica that did not sweep
        a.apply(Change(key, entry))
    assert read(a) == read(b) == ["y"]
    b.sweep()
    a.sweep()
    assert stored(a) == stored(b)
