"""One key's mergeable state, and the rules that merge two of them.

Every key holds one *incarnation*: the value a key got from its last reset (``Set``, ``Del``,
``ListClear``, ``SetClear``, expiry) plus everything added to it since. An incarnation is named
by its *birth* ``(stamp, origin, gen)``:

* ``stamp``: the hybrid-logical-clock stamp of the reset (see :mod:`.hlc`);
* ``origin``: the node that made it, which breaks ties between equal stamps;
* ``gen``: bumped when a key is re-created implicitly from "nothing" (``Increment`` or
  ``ListAdd`` on a missing key). Every replica derives the same birth from the same absent
  state, so two nodes that both increment a missing key land in the *same* incarnation and their
  increments add up instead of overwriting each other.

Merge (:func:`merge`) is a join: commutative, associative and idempotent, so replicas converge
whatever order, duplication or loss the messages suffer, once anti-entropy has filled the gaps.

* Different births: the later birth wins whole (last-writer-wins for resets).
* Same birth, different kinds (only possible for implicit re-creation racing with itself):
  the higher :data:`Kind` wins, a fixed rule every replica applies alike.
* Same birth and kind: the payloads join.

  - strings: the ``base`` is fixed at birth; ``Increment`` contributions are a per-node
    ``(count, total)`` pair and the pair with the higher count wins, so each node's increments
    are summed exactly once however often they are delivered;
  - lists: a dot store ordered by ``(stamp, node, n)`` of each append, so concurrent appends are
    all kept in one deterministic order;
  - sets: an add-wins observed-remove set (a dot store keyed by member).

An incarnation whose list or set is empty, a tombstone, and an expired one all read as "no such
key", exactly as Redis would answer.
"""

from __future__ import annotations

import hashlib
import re
from bisect import insort
from enum import IntEnum

import msgpack

from .causal import CausalContext, Dot
from .errors import WrongTypeError

#: Redis' ``string2ll`` grammar: ``0``, or an optional ``-`` and a non-zero leading digit. No
#: ``+``, no leading zeros, no ``-0``, no spaces, ASCII digits only (``[0-9]``, not ``\d``).
_INTEGER = re.compile(r"0|-?[1-9][0-9]{0,18}")
I64_MIN, I64_MAX = -(2**63), 2**63 - 1

#: Digests are computed for every key a replay or repair merges, so their helpers are bound
#: once. One reused ``Packer`` gives exactly ``msgpack.packb``'s bytes (same defaults) without
#: building a packer per call; the store runs on one event loop, never on two threads at once.
_pack = msgpack.Packer().pack
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes


def parse_integer(text: str) -> int | None:
    """Redis' notion of an integer string, exactly: the canonical form within 64 bits.

    Anything else (``+1``, ``007``, ``-0``, 20 digits) is "not an integer" in Redis, so it is
    here too, and a value is never rewritten into another spelling by an ``Increment``.
    """
    if not _INTEGER.fullmatch(text):
        return None
    number = int(text)
    return number if I64_MIN <= number <= I64_MAX else None


class Kind(IntEnum):
    """What a key holds. The order is the tie-break for same-birth kind conflicts."""

    TOMBSTONE = 0
    STRING = 1
    LIST = 2
    SET = 3


#: The kinds as plain module globals: ``Kind.LIST`` is an enum attribute lookup, several times
#: slower than a global, and :meth:`Entry.is_live` and :func:`merge` run per key of a replay.
_TOMBSTONE, _STRING, _LIST, _SET = Kind.TOMBSTONE, Kind.STRING, Kind.LIST, Kind.SET

Birth = tuple[int, str, int]

#: The birth of a key nobody has ever written: older than any real birth.
NEVER: Birth = (0, "", 0)


class ListPayload:
    """An append-only ordered dot store with removal by dot."""

    __slots__ = ("ctx", "items")

    def __init__(
        self, items: list[tuple[int, str, int, str]] | None = None, ctx: CausalContext | None = None
    ) -> None:
        #: ``(stamp, node, n, value)``, kept sorted; ``(node, n)`` is the item's dot.
        self.items: list[tuple[int, str, int, str]] = items if items is not None else []
        self.ctx = ctx if ctx is not None else CausalContext()

    def values(self) -> list[str]:
        return [item[3] for item in self.items]

    def append(self, node: str, stamp: int, value: str) -> ListPayload:
        """Append locally; returns the delta that carries just this append."""
        dot = self.ctx.next_dot(node)
        item = (stamp, node, dot[1], value)
        if not self.items or self.items[-1] < item:
            self.items.append(item)
        else:
            insort(self.items, item)
        return ListPayload([item], CausalContext.of([dot]))

    def remove_first(self, value: str) -> ListPayload | None:
        """Remove the first occurrence; returns the delta that removes it (or None)."""
        for index, item in enumerate(self.items):
            if item[3] == value:
                del self.items[index]
                return ListPayload([], CausalContext.of([(item[1], item[2])]))
        return None

    def join(self, other: ListPayload) -> None:
        mine = {(item[1], item[2]): item for item in self.items}
        theirs = {(item[1], item[2]): item for item in other.items}
        kept = [
            item
            for dot, item in mine.items()
            if dot in theirs or dot not in other.ctx  # not removed by them
        ]
        kept.extend(item for dot, item in theirs.items() if dot not in mine and dot not in self.ctx)
        kept.sort()
        self.items = kept
        self.ctx.join(other.ctx)

    def copy(self) -> ListPayload:
        return ListPayload(list(self.items), self.ctx.copy())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ListPayload) and self.items == other.items and self.ctx == other.ctx
        )


class SetPayload:
    """An add-wins observed-remove set: member -> the dots of the adds that put it there."""

    __slots__ = ("ctx", "members")

    def __init__(
        self, members: dict[str, set[Dot]] | None = None, ctx: CausalContext | None = None
    ) -> None:
        self.members: dict[str, set[Dot]] = members if members is not None else {}
        self.ctx = ctx if ctx is not None else CausalContext()

    def add(self, node: str, value: str) -> SetPayload | None:
        """Add locally; None when already a member (Redis answers 0 and nothing changes)."""
        if value in self.members:
            return None
        dot = self.ctx.next_dot(node)
        self.members[value] = {dot}
        return SetPayload({value: {dot}}, CausalContext.of([dot]))

    def remove(self, value: str) -> SetPayload | None:
        """Remove the adds we have observed; a concurrent add elsewhere survives the merge."""
        dots = self.members.pop(value, None)
        if dots is None:
            return None
        return SetPayload({}, CausalContext.of(dots))

    def join(self, other: SetPayload) -> None:
        merged: dict[str, set[Dot]] = {}
        for value in self.members.keys() | other.members.keys():
            mine = self.members.get(value, set())
            theirs = other.members.get(value, set())
            dots = (
                (mine & theirs)
                | {d for d in mine if d not in other.ctx}
                | {d for d in theirs if d not in self.ctx}
            )
            if dots:
                merged[value] = dots
        self.members = merged
        self.ctx.join(other.ctx)

    def copy(self) -> SetPayload:
        return SetPayload({v: set(d) for v, d in self.members.items()}, self.ctx.copy())

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SetPayload)
            and self.members == other.members
            and self.ctx == other.ctx
        )


#: What :attr:`Entry.value` holds; which one is fixed by the entry's :class:`Kind`.
Value = str | ListPayload | SetPayload | None


class Entry:
    """One incarnation of a key. Slots only: a million of these must stay small.

    ``value`` is the base string for :attr:`Kind.STRING`, a :class:`ListPayload` or
    :class:`SetPayload` for containers, and ``None`` for tombstones: the kind says which, always
    (the store builds entries that way and :mod:`.codec` refuses any other pairing), so code that
    has checked the kind may assert the payload's type. :meth:`as_list` and :meth:`as_set` are
    the checked accessors for code that has not. ``counts`` maps a node to
    its ``(count, total)`` increment contribution (strings only, usually ``None``). ``deadline``
    is the absolute expiry in Unix milliseconds, 0 for none; it is fixed at birth and carried
    with the value so every replica expires the key at the same moment.
    """

    __slots__ = ("counts", "deadline", "gen", "kind", "origin", "stamp", "value")

    def __init__(
        self,
        birth: Birth,
        kind: Kind,
        value: Value = None,
        deadline: int = 0,
        counts: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.stamp, self.origin, self.gen = birth
        self.kind = kind
        self.value = value
        self.deadline = deadline
        self.counts = counts

    @property
    def birth(self) -> Birth:
        return (self.stamp, self.origin, self.gen)

    def rank(self) -> tuple[int, str, int, int]:
        return (self.stamp, self.origin, self.gen, self.kind)

    def is_expired(self, now_ms: int) -> bool:
        return 0 < self.deadline <= now_ms

    def is_live(self, now_ms: int) -> bool:
        """Whether Redis would say this key exists."""
        kind = self.kind
        if kind == _TOMBSTONE or (self.deadline and self.deadline <= now_ms):
            return False
        if kind == _LIST:
            value = self.value
            assert isinstance(value, ListPayload)
            return bool(value.items)
        if kind == _SET:
            value = self.value
            assert isinstance(value, SetPayload)
            return bool(value.members)
        return True

    def as_list(self) -> ListPayload:
        """The list this entry holds; :class:`.WrongTypeError` if it holds anything else."""
        value = self.value
        if isinstance(value, ListPayload):
            return value
        raise WrongTypeError()

    def as_set(self) -> SetPayload:
        """The set this entry holds; :class:`.WrongTypeError` if it holds anything else."""
        value = self.value
        if isinstance(value, SetPayload):
            return value
        raise WrongTypeError()

    def string_value(self) -> str:
        """The string a ``Get`` returns: the base plus every node's increments."""
        value = self.value
        assert isinstance(value, str)  # only asked of Kind.STRING entries
        if not self.counts:
            return value
        base = parse_integer(value)
        if base is None:  # only a corrupt peer could pair increments with a non-integer base
            return value
        return str(base + sum(total for _, total in self.counts.values()))

    def copy(self) -> Entry:
        value = self.value
        if isinstance(value, ListPayload | SetPayload):
            value = value.copy()
        counts = dict(self.counts) if self.counts else None
        return Entry(self.birth, self.kind, value, self.deadline, counts)

    def header(self, value: Value = None) -> Entry:
        """A delta with this incarnation's identity and the given partial payload."""
        if self.kind == _STRING and value is None:
            value = self.value
        return Entry(self.birth, self.kind, value, self.deadline)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Entry)
            and self.rank() == other.rank()
            and self.deadline == other.deadline
            and self.value == other.value
            and (self.counts or None) == (other.counts or None)
        )

    def __repr__(self) -> str:
        return (
            f"Entry(birth={self.birth!r}, kind={self.kind.name}, value={self.value!r}, "
            f"deadline={self.deadline}, counts={self.counts!r})"
        )

    def digest(self) -> int:
        """A stable 64-bit fingerprint of this state, equal on every replica that agrees.

        Anti-entropy compares XORs of these per bucket, so it must not depend on Python's
        per-process string hashing or on insertion order.
        """
        value = self.value
        plain: list[object]
        if value.__class__ is str or value is None:  # strings, tombstones: canonical() inlined
            counts = sorted(self.counts.items()) if self.counts else []
            plain = [
                self.stamp,
                self.origin,
                self.gen,
                int(self.kind),
                self.deadline,
                value,
                counts,
            ]
        else:
            plain = canonical(self)
        return _from_bytes(_blake2b(_pack(plain), digest_size=8).digest(), "little")


def canonical(entry: Entry) -> list[object]:
    """A deterministic plain-data form of an entry (sorted where order is not meaningful)."""
    value = entry.value
    payload: object
    if isinstance(value, ListPayload):
        payload = [
            [list(item) for item in value.items],
            sorted(value.ctx.vv.items()),
            sorted(value.ctx.cloud),
        ]
    elif isinstance(value, SetPayload):
        payload = [
            sorted((member, sorted(dots)) for member, dots in value.members.items()),
            sorted(value.ctx.vv.items()),
            sorted(value.ctx.cloud),
        ]
    else:
        payload = value
    counts = sorted(entry.counts.items()) if entry.counts else []
    return [entry.stamp, entry.origin, entry.gen, int(entry.kind), entry.deadline, payload, counts]


def merge(local: Entry | None, incoming: Entry) -> Entry:
    """Join ``incoming`` into ``local`` and return the result (``local`` may be mutated).

    ``incoming`` is never mutated and never aliased into the result, so one decoded delta can
    be applied to several stores (tests do exactly that).
    """
    if local is None:
        return incoming.copy()
    mine, theirs = local.rank(), incoming.rank()
    if theirs > mine:
        return incoming.copy()
    if theirs < mine:
        return local
    # Same incarnation: join the payloads.
    if local.deadline != incoming.deadline:  # cannot happen between honest peers; stay total
        local.deadline = max(local.deadline, incoming.deadline)
    kind = local.kind
    if kind == _STRING:
        if incoming.value != local.value:
            mine_base, their_base = local.value, incoming.value
            assert isinstance(mine_base, str) and isinstance(their_base, str)
            local.value = max(mine_base, their_base)
        if incoming.counts:
            counts = local.counts if local.counts is not None else {}
            for node, pair in incoming.counts.items():
                have = counts.get(node)
                if have is None or pair > have:
                    counts[node] = pair
            local.counts = counts
    elif kind == _LIST:  # same kind, so the same payload type on both sides (see Entry)
        into_list, other_list = local.value, incoming.value
        assert isinstance(into_list, ListPayload) and isinstance(other_list, ListPayload)
        into_list.join(other_list)
    elif kind == _SET:
        into_set, other_set = local.value, incoming.value
        assert isinstance(into_set, SetPayload) and isinstance(other_set, SetPayload)
        into_set.join(other_set)
    return local
