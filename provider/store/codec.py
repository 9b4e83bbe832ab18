"""Plain-data form of a :class:`~.store.Change`, for replication messages and snapshots.

The form is a msgpack-friendly list, positional to stay small on the wire. Decoding validates
every field and raises :class:`ChangeDecodeError` on anything malformed, because these come from
the network: a foreign or corrupt message must be dropped, never crash a replica or poison its
state.
"""

from __future__ import annotations

import secrets
from typing import Any

from .causal import CausalContext
from .entry import I64_MAX, I64_MIN, Entry, Kind, ListPayload, SetPayload, Value
from .store import Change


class ChangeDecodeError(ValueError):
    """A change record that does not have the documented shape."""


#: Every counter, stamp, generation, deadline and dot number on the wire stays at or below this.
#: Honest values are far smaller (a stamp is about 2^57 until the year 2500), and the margin
#: means local arithmetic on an accepted value (a generation + 2, a dot + 1) can never overflow
#: msgpack's 64 bits: no peer can make a later actor call fail with an internal error.
MAX_UINT = 2**62

#: Node ids have one format: 16 lower-case hex digits (64 random bits, fresh per process).
NODE_ID_LENGTH = 16
_HEX_DIGITS = "0123456789abcdef"


def new_node_id() -> str:
    """A fresh node id for this process (a restarted instance is a new peer)."""
    return secrets.token_hex(NODE_ID_LENGTH // 2)


def is_node_id(value: Any) -> bool:
    """Whether ``value`` is a node id in the one accepted format."""
    return isinstance(value, str) and len(value) == NODE_ID_LENGTH and not value.strip(_HEX_DIGITS)


def encode_change(change: Change) -> list[object]:
    entry = change.entry
    value = entry.value
    payload: object
    if isinstance(value, ListPayload):
        payload = [[list(item) for item in value.items], *_encode_ctx(value.ctx)]
    elif isinstance(value, SetPayload):
        payload = [
            {member: [list(dot) for dot in dots] for member, dots in value.members.items()},
            *_encode_ctx(value.ctx),
        ]
    else:
        payload = value
    counts = {node: list(pair) for node, pair in entry.counts.items()} if entry.counts else None
    return [
        change.key,
        entry.stamp,
        entry.origin,
        entry.gen,
        int(entry.kind),
        entry.deadline,
        payload,
        counts,
    ]


def _encode_ctx(ctx: CausalContext) -> tuple[dict[str, int], list[list[str | int]]]:
    return ctx.vv, [list(dot) for dot in ctx.cloud]


def decode_change(data: Any) -> Change:
    """Rebuild a change from :func:`encode_change` output; strict about every type."""
    try:
        key, stamp, origin, gen, kind, deadline, payload, counts = data
        _check(isinstance(key, str), "key")
        for name, number in (("stamp", stamp), ("gen", gen), ("deadline", deadline)):
            _check(_is_uint(number), name)
        # The empty origin is the birth every replica derives for a key re-created from nothing.
        _check(origin == "" or is_node_id(origin), "origin")
        kind = Kind(kind)
        if kind == Kind.STRING:
            _check(isinstance(payload, str), "string value")
            value: Value = payload
        elif kind == Kind.TOMBSTONE:
            _check(payload is None, "tombstone payload")
            value = None
        elif kind == Kind.LIST:
            items, vv, cloud = payload
            decoded = []
            for item in items:
                item_stamp, node, n, text = item
                _check(_is_uint(item_stamp) and is_node_id(node), "list item")
                _check(_is_uint(n) and isinstance(text, str), "list item")
                decoded.append((item_stamp, node, n, text))
            decoded.sort()
            # One dot names one item; two would collapse into one on the next join.
            _check(len({item[1:3] for item in decoded}) == len(decoded), "duplicate list dot")
            value = ListPayload(decoded, _decode_ctx(vv, cloud))
        else:
            members, vv, cloud = payload
            _check(isinstance(members, dict), "set members")
            set_value = SetPayload(
                {_str(member): {_dot(dot) for dot in dots} for member, dots in members.items()},
                _decode_ctx(vv, cloud),
            )
            # A member without dots would show on the replica that adopts the record whole and
            # vanish on any that joins it: applying it twice would change the state.
            _check(all(set_value.members.values()), "set member without dots")
            value = set_value
        decoded_counts = None
        if counts is not None:
            _check(isinstance(counts, dict), "counts")
            decoded_counts = {}
            for node, pair in counts.items():
                count, total = pair
                _check(is_node_id(node) and _is_uint(count), "counts")
                _check(isinstance(total, int) and not isinstance(total, bool), "counts")
                _check(I64_MIN <= total <= I64_MAX, "counts")
                decoded_counts[node] = (count, total)
            _check(kind == Kind.STRING, "counts on a non-string")
        entry = Entry((stamp, origin, gen), kind, value, deadline, decoded_counts or None)
        return Change(key, entry)
    except ChangeDecodeError:
        raise
    except (TypeError, ValueError, AttributeError) as error:
        raise ChangeDecodeError(f"malformed change record: {error}") from None


def _decode_ctx(vv: Any, cloud: Any) -> CausalContext:
    _check(isinstance(vv, dict), "version vector")
    for node, n in vv.items():
        # n == 0 means "nothing seen", which the vector never stores: keeps the form canonical.
        _check(is_node_id(node) and _is_uint(n) and n > 0, "version vector")
    ctx = CausalContext(dict(vv), {_dot(dot) for dot in cloud})
    ctx.compact()
    return ctx


def _dot(data: Any) -> tuple[str, int]:
    node, n = data
    _check(is_node_id(node) and _is_uint(n), "dot")
    return (node, n)


def _str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ChangeDecodeError("malformed change record: bad string")


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_UINT


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ChangeDecodeError(f"malformed change record: bad {what}")
