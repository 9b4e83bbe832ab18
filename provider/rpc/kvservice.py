"""The keyvalue contract's 15 operations, mapped onto the store.

This is the only place that knows both the wire types (:mod:`contract.keyvalue`) and the store
(:mod:`provider.store`). It stays free of I/O: it returns the encoded reply and the change to
replicate, and the caller decides what to do with them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contract.keyvalue import GetResponse, Operation
from provider.store import Change, KeyValueStore, TooLargeError, distinct_names

#: Longest key accepted, in UTF-8 bytes. Redis allows far more; a cache key this long is a bug
#: or an attack, and every key travels in every replication message about it.
MAX_KEY_BYTES = 16 * 1024

Handler = Callable[[KeyValueStore, Any], tuple[Any, Change | None]]


def _read(fn: Callable[[KeyValueStore, Any], Any]) -> Handler:
    return lambda store, arg: (fn(store, arg), None)


def _get(store: KeyValueStore, key: str) -> GetResponse:
    value = store.get(key)
    return GetResponse(value="" if value is None else value, exists=value is not None)


def _set(store: KeyValueStore, req: Any) -> tuple[None, Change]:
    return None, store.set(req.key, req.value, req.expires)


HANDLERS: dict[str, Handler] = {
    "Get": _read(_get),
    "Set": _set,
    "Del": lambda store, key: store.delete(key),
    "Contains": _read(lambda store, key: store.contains(key)),
    "Increment": lambda store, req: store.increment(req.key, req.value),
    "ListAdd": lambda store, req: store.list_add(req.list_name, req.value),
    "ListDel": lambda store, req: store.list_del(req.list_name, req.value),
    "ListClear": lambda store, name: store.delete(name),
    "ListRange": _read(lambda store, req: store.list_range(req.list_name, req.start, req.stop)),
    "SetAdd": lambda store, req: store.set_add(req.set_name, req.value),
    "SetDel": lambda store, req: store.set_del(req.set_name, req.value),
    "SetQuery": _read(lambda store, name: store.set_query(name)),
    "SetUnion": _read(lambda store, names: store.set_union(names)),
    "SetIntersection": _read(lambda store, names: store.set_intersection(names)),
    "SetClear": lambda store, name: store.delete(name),
}


def _keys_of(arg: Any) -> list[str]:
    """The key names an argument addresses (a bare name, a name list, or a request struct)."""
    if isinstance(arg, str):
        return [arg]
    if isinstance(arg, list):
        return arg
    for attribute in ("key", "list_name", "set_name"):
        if hasattr(arg, attribute):
            return [getattr(arg, attribute)]
    return []


def execute(store: KeyValueStore, operation: Operation, arg: Any) -> tuple[bytes, Change | None]:
    """Run one decoded operation; returns the encoded reply and the change it made (if any).

    Raises :class:`provider.store.StoreError` when the operation is refused.
    """
    if isinstance(arg, list):  # SetUnion / SetIntersection: one check per distinct name
        arg = distinct_names(arg)
    for key in _keys_of(arg):
        # Cheap length test first: only a long key is worth encoding to count its bytes.
        if len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8", "surrogatepass")) > (
            MAX_KEY_BYTES
        ):
            raise TooLargeError(f"ERR key is longer than {MAX_KEY_BYTES} bytes")
    result, change = HANDLERS[operation.name](store, arg)
    return operation.encode_output(result), change
