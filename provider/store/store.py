"""The key-value store: Redis-like operations over mergeable per-key state. Pure: no I/O.

Every mutating method returns its real result *and* a :class:`Change`: a self-contained,
idempotent delta that any other replica can :meth:`KeyValueStore.apply` in any order, any number
of times. Standalone mode simply drops the changes; replication backends ship them. Reads never
produce changes.

Keys are spread over :data:`BUCKETS` fixed buckets by a stable hash. The buckets make
anti-entropy cheap (peers compare one 64-bit digest per bucket and exchange only the buckets that
differ) and let a snapshot be streamed in bounded chunks. Digests are only maintained once
:meth:`KeyValueStore.track_digests` is on, so a standalone store pays nothing for them.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

from provider.memory import (
    ENTRY_OVERHEAD,
    container_cost,
    list_item_cost,
    list_items_cost,
    set_member_cost,
    set_members_cost,
    string_cost,
    tombstone_cost,
)

from .entry import (
    I64_MAX,
    I64_MIN,
    NEVER,
    Birth,
    Entry,
    Kind,
    ListPayload,
    SetPayload,
    Value,
    merge,
    parse_integer,
)
from .errors import (
    IncrementOverflowError,
    NotIntegerError,
    OutOfMemoryError,
    TooMuchWorkError,
    WrongTypeError,
)
from .hlc import HybridClock, stamp_ms, wall_ms

BUCKETS = 1024
#: Each bucket splits again into this many sub-buckets for repair: peers whose bucket digests
#: differ compare the bucket's sub-bucket digests next and exchange only the sub-buckets that
#: differ, so repair traffic follows the difference, not the bucket size.
SUB_BUCKETS = 64
I32_MIN, I32_MAX = -(2**31), 2**31 - 1

#: Tombstones older than this are forgotten. Until then they stop a late or replayed message from
#: resurrecting what was deleted; a peer cut off for longer than this can bring a deleted key
#: back. One hour by default; the provider makes it configurable. Emptied lists and sets are kept:
#: their causal context is what lets a later add on the same incarnation reach the other replicas.
DEFAULT_TOMBSTONE_HORIZON_MS = 3_600_000

# Per-call bounds: no single read may hold the event loop for long (README, "Limits").
#: Set names one SetUnion/SetIntersection may give, duplicates included.
MAX_SET_NAMES_GIVEN = 200_000
#: Distinct set names one SetUnion/SetIntersection may give (duplicates are dropped first).
MAX_SET_NAMES = 10_000
#: Members one SetUnion may read, or membership tests one SetIntersection may need (at least
#: one per member of its smallest set).
MAX_SET_SCAN = 50_000
#: Items one ListRange / SetQuery / SetUnion / SetIntersection may return.
MAX_RESULT_ITEMS = 50_000
#: Characters (summed string lengths) one ListRange may return.
MAX_RESULT_BYTES = 16 * 1024 * 1024

_VALUE = itemgetter(3)
_crc32 = zlib.crc32
_sizeof = sys.getsizeof
#: Module globals, several times cheaper to read than the enum attributes (see .entry).
_TOMBSTONE, _STRING, _LIST, _SET = Kind.TOMBSTONE, Kind.STRING, Kind.LIST, Kind.SET

#: What a :meth:`KeyValueStore._mutate` builder returns to the caller.
_Result = TypeVar("_Result")


def distinct_names(names: list[str]) -> list[str]:
    """``names`` without duplicates, in first-seen order, within the per-call bounds."""
    if len(names) > MAX_SET_NAMES_GIVEN:
        raise TooMuchWorkError(f"ERR too many set names (more than {MAX_SET_NAMES_GIVEN})")
    distinct = list(dict.fromkeys(names)) if len(names) > 1 else names
    if len(distinct) > MAX_SET_NAMES:
        raise TooMuchWorkError(f"ERR too many distinct set names (more than {MAX_SET_NAMES})")
    return distinct


def _too_many(operation: str, count: int) -> TooMuchWorkError:
    return TooMuchWorkError(
        f"ERR {operation} result would exceed {MAX_RESULT_ITEMS} items ({count}); "
        "ask for less at a time"
    )


def bucket_of(key: str) -> int:
    """The bucket a key lives in; identical on every replica and across restarts."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % BUCKETS


def _key_digest(key: str, entry: Entry) -> int:
    return entry.digest() ^ zlib.crc32(key.encode("utf-8", "surrogatepass"))


def sub_bucket_of(key: str) -> int:
    """The sub-bucket of a key inside its bucket: the hash bits above the bucket number."""
    return (zlib.crc32(key.encode("utf-8", "surrogatepass")) // BUCKETS) % SUB_BUCKETS


@dataclass(slots=True, frozen=True)
class Change:
    """A replicable delta: merge ``entry`` into ``key``."""

    key: str
    entry: Entry


class KeyValueStore:
    """An in-memory map of keys to mergeable entries, answering the keyvalue contract."""

    def __init__(
        self,
        node_id: str,
        *,
        now_ms: Callable[[], int] = wall_ms,
        tombstone_horizon_ms: int = DEFAULT_TOMBSTONE_HORIZON_MS,
    ) -> None:
        self.node_id = node_id
        self.clock = HybridClock(now_ms)
        self._now_ms = now_ms
        self.tombstone_horizon_ms = tombstone_horizon_ms
        self._buckets: list[dict[str, Entry]] = [{} for _ in range(BUCKETS)]
        self._digests: list[int] | None = None
        #: Set by replicating backends: see :meth:`delete`.
        self.tombstone_absent_keys = False
        #: ``MAX_MEMORY`` in bytes, 0 for none: above it, writes that grow memory are refused.
        self.max_memory = 0
        #: The estimated memory the entries take (see :mod:`provider.memory`), kept as they
        #: change.
        self.used_memory = 0
        #: Writes refused because :attr:`used_memory` was above :attr:`max_memory`.
        self.oom_refusals = 0

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        """Number of stored entries, tombstones included."""
        return sum(len(bucket) for bucket in self._buckets)

    def live_count(self) -> int:
        now = self._now_ms()
        return sum(1 for _, entry in self.items() if entry.is_live(now))

    def items(self) -> Iterator[tuple[str, Entry]]:
        for bucket in self._buckets:
            yield from bucket.items()

    def bucket_items(self, index: int) -> list[tuple[str, Entry]]:
        return list(self._buckets[index].items())

    def sub_digests(self, index: int) -> list[int]:
        """Digests of bucket ``index``'s sub-buckets, computed on demand (repair only)."""
        digests = [0] * SUB_BUCKETS
        for key, entry in self._buckets[index].items():
            digests[sub_bucket_of(key)] ^= _key_digest(key, entry)
        return digests

    def sub_bucket_items(self, index: int, subs: set[int]) -> list[tuple[str, Entry]]:
        """The entries of bucket ``index`` that fall in the sub-buckets ``subs``."""
        return [(k, e) for k, e in self._buckets[index].items() if sub_bucket_of(k) in subs]

    def entry(self, key: str) -> Entry | None:
        """The raw stored entry (tests and replication use it)."""
        return self._buckets[bucket_of(key)].get(key)

    def track_digests(self) -> list[int]:
        """Turn on per-bucket digests (for anti-entropy) and return them."""
        if self._digests is None:
            digests = [0] * BUCKETS
            for index, bucket in enumerate(self._buckets):
                for key, entry in bucket.items():
                    digests[index] ^= _key_digest(key, entry)
            self._digests = digests
        return self._digests

    def _digest_of(self, key: str, entry: Entry | None) -> int:
        """The entry's contribution to its bucket digest (0 when digests are off)."""
        if self._digests is None or entry is None:
            return 0
        return _key_digest(key, entry)

    def _put(self, key: str, bucket: dict[str, Entry], old_digest: int, new: Entry) -> None:
        """Store ``new`` for ``key``; ``old_digest`` is what the key contributed before."""
        bucket[key] = new
        if self._digests is not None:
            self._digests[bucket_of(key)] ^= old_digest ^ _key_digest(key, new)

    # ------------------------------------------------------------------ memory
    def _cost(self, key: str, entry: Entry | None) -> int:
        """The estimated memory of ``key`` holding ``entry`` (linear in a container's size)."""
        if entry is None:
            return 0
        kind = entry.kind
        if kind == _LIST:
            value = entry.value
            assert isinstance(value, ListPayload)
            items = value.items
            return self._held(key, entry) + list_items_cost(map(_VALUE, items), len(items))
        if kind == _SET:
            value = entry.value
            assert isinstance(value, SetPayload)
            return self._held(key, entry) + set_members_cost(value.members)
        return self._held(key, entry)

    @staticmethod
    def _held(key: str, entry: Entry) -> int:
        """The cost of ``entry`` without its list items or set members; constant time."""
        kind = entry.kind
        value = entry.value
        if kind == _STRING:
            assert isinstance(value, str)
            return string_cost(key, value, len(entry.counts) if entry.counts else 0)
        if kind == _TOMBSTONE:
            return tombstone_cost(key)
        assert isinstance(value, (ListPayload, SetPayload))
        ctx = value.ctx
        return container_cost(key, len(ctx.vv) + len(ctx.cloud))

    @staticmethod
    def _payload_cost(payload: object) -> int:
        if isinstance(payload, ListPayload):
            return list_items_cost(map(_VALUE, payload.items), len(payload.items))
        if isinstance(payload, SetPayload):
            return set_members_cost(payload.members)
        return 0

    def _check_memory(self) -> None:
        """Refuse a write that would grow memory while the estimate is above the limit."""
        if self.max_memory and self.used_memory > self.max_memory:
            self.oom_refusals += 1
            raise OutOfMemoryError()

    def recount_memory(self) -> int:
        """Recompute :attr:`used_memory` from scratch (tests check the running estimate)."""
        self.used_memory = sum(self._cost(key, entry) for key, entry in self.items())
        return self.used_memory

    def _lookup(self, key: str) -> tuple[dict[str, Entry], Entry | None]:
        bucket = self._buckets[bucket_of(key)]
        return bucket, bucket.get(key)

    def _live(self, key: str) -> Entry | None:
        entry = self._buckets[bucket_of(key)].get(key)
        if entry is None or not entry.is_live(self._now_ms()):
            return None
        return entry

    def _typed(self, key: str, kind: Kind) -> Entry | None:
        entry = self._live(key)
        if entry is not None and entry.kind != kind:
            raise WrongTypeError()
        return entry

    def _mutate(
        self, key: str, kind: Kind, build: Callable[[Entry], tuple[_Result, Value]]
    ) -> tuple[_Result, Change]:
        """Run ``build`` on the live entry of ``kind`` for ``key``, creating it if absent.

        ``build`` checks its preconditions *before* touching the entry (raising leaves the store
        unchanged), then mutates it in place and returns ``(result, delta_payload)``.
        """
        bucket, entry = self._lookup(key)
        now = self._now_ms()
        old_digest = self._digest_of(key, entry)
        if entry is None or not entry.is_live(now):
            if entry is not None and entry.kind == kind and not entry.is_expired(now):
                # an emptied list/set of the same kind keeps its causal context
                released = self._held(key, entry)
            else:
                released = self._cost(key, entry)
                entry = _fresh(_recreated_birth(entry, now), kind)
        elif entry.kind != kind:
            raise WrongTypeError()
        else:
            released = self._held(key, entry)
        result, delta_payload = build(entry)
        self._put(key, bucket, old_digest, entry)
        self.used_memory += self._held(key, entry) + self._payload_cost(delta_payload) - released
        return result, Change(key, entry.header(delta_payload))

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> str | None:
        entry = self._typed(key, _STRING)
        return None if entry is None else entry.string_value()

    def contains(self, key: str) -> bool:
        return self._live(key) is not None

    def list_range(self, name: str, start: int, stop: int) -> list[str]:
        entry = self._live(name)
        if entry is None:
            return []
        items = entry.as_list().items
        n = len(items)
        first = max(n + start, 0) if start < 0 else start
        last = n + stop if stop < 0 else min(stop, n - 1)
        if first > last or first >= n:
            return []
        if last + 1 - first > MAX_RESULT_ITEMS:
            raise _too_many("ListRange", last + 1 - first)
        values = list(map(_VALUE, items[first : last + 1]))
        if sum(map(len, values)) > MAX_RESULT_BYTES:
            raise TooMuchWorkError(
                f"ERR ListRange result would exceed {MAX_RESULT_BYTES} bytes; "
                "ask for a smaller range"
            )
        return values

    def set_query(self, name: str) -> list[str]:
        entry = self._live(name)
        if entry is None:
            return []
        members = entry.as_set().members
        if len(members) > MAX_RESULT_ITEMS:
            raise _too_many("SetQuery", len(members))
        return list(members)

    def _named_sets(self, names: list[str]) -> list[SetPayload | None]:
        """The live sets ``names`` (deduplicated, bounded) name; WRONGTYPE for another type."""
        live = self._live
        return [
            None if (entry := live(name)) is None else entry.as_set()
            for name in distinct_names(names)
        ]

    def set_union(self, names: list[str]) -> list[str]:
        """SUNION over distinct names; at most :data:`MAX_SET_SCAN` members read."""
        sets = [payload.members for payload in self._named_sets(names) if payload is not None]
        scan = sum(map(len, sets))
        if scan > MAX_SET_SCAN:
            raise TooMuchWorkError(
                f"ERR SetUnion would read {scan} members, more than {MAX_SET_SCAN}"
            )
        if len(sets) == 1:
            return list(sets[0])
        return list(set().union(*sets))

    def set_intersection(self, names: list[str]) -> list[str]:
        """SINTER over distinct names, smallest set first; bounded membership tests."""
        payloads = self._named_sets(names)  # type-checks every name
        found = [payload.members for payload in payloads if payload is not None]
        if not payloads or len(found) < len(payloads):
            return []
        sets = sorted(found, key=len)
        smallest, rest = sets[0], sets[1:]
        checks = len(smallest) * max(len(rest), 1)
        if checks > MAX_SET_SCAN:
            raise TooMuchWorkError(
                f"ERR SetIntersection would need {checks} membership tests, more than "
                f"{MAX_SET_SCAN}"
            )
        result = list(smallest)
        for members in rest:
            result = [m for m in result if m in members]
            if not result:
                break
        return result

    # ------------------------------------------------------------------ writes
    def set(self, key: str, value: str, expires: int = 0) -> Change:
        """Overwrite whatever ``key`` holds; ``expires`` seconds > 0 sets a TTL."""
        self._check_memory()
        bucket, old = self._lookup(key)
        stamp = self.clock.now()
        deadline = stamp_ms(stamp) + expires * 1000 if expires > 0 else 0
        entry = Entry((stamp, self.node_id, 0), Kind.STRING, value, deadline)
        self.used_memory += string_cost(key, value) - self._cost(key, old)
        self._put(key, bucket, self._digest_of(key, old), entry)
        return Change(key, entry.copy())

    def delete(self, key: str) -> tuple[bool, Change | None]:
        """Delete whatever ``key`` holds (also ListClear and SetClear); True if it existed.

        With :attr:`tombstone_absent_keys` (set by replicating backends) a delete of a key this
        replica has not seen (yet) still writes a tombstone, which merges with the value when
        it arrives: the delete takes effect even if it overtook the write it deletes.
        """
        bucket, old = self._lookup(key)
        live = old is not None and old.is_live(self._now_ms())
        if not live and not self.tombstone_absent_keys:
            return False, None
        entry = Entry((self.clock.now(), self.node_id, 0), Kind.TOMBSTONE)
        self.used_memory += tombstone_cost(key) - self._cost(key, old)
        self._put(key, bucket, self._digest_of(key, old), entry)
        return live, Change(key, entry.copy())

    def increment(self, key: str, delta: int) -> tuple[int, Change]:
        """Add ``delta`` to an integer string (missing counts as 0); returns the new value.

        The delta record carries this node's whole ``(count, total)`` contribution, so a lost
        increment message is repaired by the next one and a duplicate changes nothing.
        """
        self._check_memory()
        node = self.node_id

        def build(entry: Entry) -> tuple[int, None]:
            current = parse_integer(entry.string_value())
            if current is None:
                raise NotIntegerError()
            new_value = current + delta
            if not I32_MIN <= new_value <= I32_MAX:
                raise IncrementOverflowError()
            counts = entry.counts if entry.counts is not None else {}
            count, total = counts.get(node, (0, 0))
            if not I64_MIN <= total + delta <= I64_MAX:  # this node's share must stay 64-bit
                raise IncrementOverflowError()
            counts[node] = (count + 1, total + delta)
            entry.counts = counts
            return new_value, None

        result, change = self._mutate(key, _STRING, build)
        stored = self.entry(key)
        assert stored is not None and stored.counts is not None  # what build() just stored
        change.entry.counts = {node: stored.counts[node]}
        return result, change

    def list_add(self, name: str, value: str) -> tuple[int, Change]:
        """Append at the tail (RPUSH); returns the new length."""
        self._check_memory()

        def build(entry: Entry) -> tuple[int, ListPayload]:
            payload = entry.as_list()
            delta = payload.append(self.node_id, self.clock.now(), value)
            return len(payload.items), delta

        return self._mutate(name, _LIST, build)

    def list_del(self, name: str, value: str) -> tuple[bool, Change | None]:
        """Remove the first occurrence (LREM key 1 value)."""
        bucket, entry = self._lookup(name)
        if entry is None or not entry.is_live(self._now_ms()):
            return False, None
        payload = entry.as_list()
        old_digest = self._digest_of(name, entry)
        delta = payload.remove_first(value)
        if delta is None:
            return False, None
        self.used_memory -= list_item_cost(value)
        self._put(name, bucket, old_digest, entry)
        return True, Change(name, entry.header(delta))

    def set_add(self, name: str, value: str) -> tuple[int, Change | None]:
        """SADD: 1 if newly added, 0 if already a member."""
        self._check_memory()
        entry = self._live(name)
        if entry is not None and value in entry.as_set().members:
            return 0, None

        def build(target: Entry) -> tuple[int, SetPayload | None]:
            return 1, target.as_set().add(self.node_id, value)

        return self._mutate(name, _SET, build)

    def set_del(self, name: str, value: str) -> tuple[int, Change | None]:
        """SREM: 1 if removed, 0 otherwise."""
        bucket, entry = self._lookup(name)
        if entry is None or not entry.is_live(self._now_ms()):
            return 0, None
        payload = entry.as_set()
        old_digest = self._digest_of(name, entry)
        dots = len(payload.members.get(value, ()))
        delta = payload.remove(value)
        if delta is None:
            return 0, None
        self.used_memory -= set_member_cost(value, dots)
        self._put(name, bucket, old_digest, entry)
        return 1, Change(name, entry.header(delta))

    # ------------------------------------------------------------------ replication
    def apply(self, change: Change) -> None:
        """Merge a change from anywhere: a peer's delta, a snapshot chunk, a repair.

        Always applied, whatever :attr:`max_memory` says: refusing would make replicas diverge.
        """
        self.apply_many((change,))

    def apply_many(self, changes: Iterable[Change], *, adopt: bool = False) -> int:
        """Merge a batch of changes, as :meth:`apply` would one by one; returns how many.

        A snapshot replay merges millions of changes, so this is the hot loop of a joining
        instance: each key's hash is computed once (bucket and digest share it), the memory
        estimate is summed per batch and added once, a fresh string key (nearly every key of a
        replay) is costed inline, and a change older than what the key holds is skipped before
        any digest or cost is computed, since merging it would change nothing.

        ``adopt`` is the caller's promise that the changes were decoded for this call alone
        and are not used afterwards: a key the store does not hold yet then takes the incoming
        entry itself instead of a copy (a copy per key was a tenth of a replay's merge time).
        Without it, as for :meth:`apply`, nothing of ``changes`` is aliased into the store.
        """
        observe = self.clock.observe
        buckets = self._buckets
        digests = self._digests
        cost = self._cost
        grown = count = 0
        try:
            for change in changes:
                count += 1
                key, incoming = change.key, change.entry
                observe(incoming.stamp)
                kind = incoming.kind
                if kind == _LIST:
                    value = incoming.value
                    assert isinstance(value, ListPayload)
                    if value.items:
                        observe(value.items[-1][0])  # later appends order after these
                crc = _crc32(key.encode("utf-8", "surrogatepass"))
                index = crc % BUCKETS
                bucket = buckets[index]
                old = bucket.get(key)
                if old is None:
                    merged = incoming if adopt else incoming.copy()
                    if kind == _STRING and not merged.counts:  # string_cost(), inlined
                        grown += ENTRY_OVERHEAD + _sizeof(key) + _sizeof(merged.value)
                    else:
                        grown += cost(key, merged)
                    bucket[key] = merged
                    if digests is not None:
                        digests[index] ^= merged.digest() ^ crc
                    continue
                if incoming.rank() < old.rank():
                    continue  # merge() would return ``old`` untouched
                old_digest = old.digest() if digests is not None else 0
                before = cost(key, old)  # before the merge, which may change ``old`` in place
                merged = merge(old, incoming)
                grown += cost(key, merged) - before
                bucket[key] = merged
                if digests is not None:
                    digests[index] ^= old_digest ^ merged.digest()
        finally:
            self.used_memory += grown
        return count

    def sweep(self, buckets: range | None = None) -> int:
        """Turn expired keys into tombstones and forget old tombstones; returns keys touched.

        ``buckets`` limits the pass to some buckets, so a large store can be swept a slice at a
        time without stalling the event loop.

        An emptied list or set is never forgotten here: when it was emptied is not known (its
        birth may be stamp 0 or long past), and a replica that forgot it would re-create the key
        from nothing, as an incarnation ranked below the one its peers still hold, or as that
        same one with re-minted dots they have seen removed: its next adds would be dropped.

        Every replica derives the same tombstone from the same expired entry, so expiry needs no
        messages of its own.
        """
        now = self._now_ms()
        horizon = now - self.tombstone_horizon_ms
        touched = 0
        for index in buckets if buckets is not None else range(BUCKETS):
            bucket = self._buckets[index]
            for key, entry in list(bucket.items()):
                if entry.is_expired(now):
                    tomb = Entry((entry.stamp, entry.origin, entry.gen + 1), Kind.TOMBSTONE)
                    self.used_memory += tombstone_cost(key) - self._cost(key, entry)
                    self._put(key, bucket, self._digest_of(key, entry), tomb)
                    touched += 1
                elif entry.kind == Kind.TOMBSTONE and stamp_ms(entry.stamp) < horizon:
                    del bucket[key]
                    self.used_memory -= tombstone_cost(key)
                    if self._digests is not None:
                        self._digests[bucket_of(key)] ^= _key_digest(key, entry)
                    touched += 1
        return touched


def _recreated_birth(absent: Entry | None, now_ms: int) -> Birth:
    """The birth of a key re-created implicitly from an absent state.

    Every replica derives the same birth from the same absent state: so concurrent
    ``Increment``s or ``ListAdd``s on a missing key share one incarnation and all count. An
    expired entry first becomes the tombstone ``gen + 1`` (as :meth:`KeyValueStore.sweep` makes
    it), and the new incarnation comes after that.
    """
    if absent is None:
        return (NEVER[0], NEVER[1], NEVER[2] + 1)
    stamp, origin, gen = absent.birth
    return (stamp, origin, gen + 2 if absent.is_expired(now_ms) else gen + 1)


def _fresh(birth: Birth, kind: Kind) -> Entry:
    if kind == Kind.LIST:
        return Entry(birth, kind, ListPayload())
    if kind == Kind.SET:
        return Entry(birth, kind, SetPayload())
    return Entry(birth, kind, "0")  # only Increment creates a string implicitly
