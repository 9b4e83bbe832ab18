"""Strict field checks for decoded msgpack/JSON values, with serde-like error texts.

The Rust peers decode with serde, which rejects a value of the wrong type instead of coercing it.
Doing the same here keeps a malformed message from turning into a confusing failure deep inside
the provider (or a crash), and the error texts mimic serde so actors see familiar messages.
Every check raises ``FieldError``; callers re-raise it as their own exception type.
"""

from __future__ import annotations

from typing import Any

I32_MIN = -(2**31)
I32_MAX = 2**31 - 1
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1


class FieldError(ValueError):
    """A decoded value has the wrong type, is out of range, or a required key is missing."""


def describe(value: Any) -> str:
    """Short serde-style description of a value for error texts (never echoes large payloads)."""
    if value is None:
        return "nil"
    if value is True or value is False:
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"string {shown!r}"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"byte array of length {len(value)}"
    if isinstance(value, list | tuple):
        return f"sequence of length {len(value)}"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def type_error(field: str, value: Any, expected: str) -> FieldError:
    return FieldError(f"invalid type for `{field}`: {describe(value)}, expected {expected}")


def missing(field: str) -> FieldError:
    return FieldError(f"missing field `{field}`")


def as_str(value: Any, field: str) -> str:
    if type(value) is not str:
        raise type_error(field, value, "a string")
    return value


def as_bytes(value: Any, field: str) -> bytes:
    if type(value) is not bytes:
        raise type_error(field, value, "a byte array (msgpack bin)")
    return value


def as_bool(value: Any, field: str) -> bool:
    if value is not True and value is not False:
        raise type_error(field, value, "a boolean")
    return value


def as_int(value: Any, field: str, low: int, high: int, type_name: str) -> int:
    """An integer (never a bool) within ``[low, high]``; ``type_name`` names the Rust type."""
    if type(value) is not int:
        raise type_error(field, value, type_name)
    if not low <= value <= high:
        raise FieldError(f"invalid value for `{field}`: integer `{value}`, expected {type_name}")
    return value


def as_str_list(value: Any, field: str) -> list[str]:
    if type(value) is not list:
        raise type_error(field, value, "a sequence of strings")
    for item in value:
        if type(item) is not str:
            raise type_error(f"{field}[]", item, "a string")
    return value


def as_str_map(value: Any, field: str) -> dict[str, str]:
    if type(value) is not dict:
        raise type_error(field, value, "a map of string to string")
    for key, item in value.items():
        if type(key) is not str:
            raise type_error(f"{field} key", key, "a string")
        if type(item) is not str:
            raise type_error(f"{field}[{key!r}]", item, "a string")
    return value


def struct_fields(obj: Any, names: tuple[str, ...], type_name: str) -> dict[Any, Any]:
    """Normalise a struct given as a map or as a positional array into a map.

    rmp_serde accepts both forms for every struct; a positional array may be shorter than the
    field list (missing trailing fields take their defaults) but never longer.
    """
    if type(obj) is dict:
        return obj
    if type(obj) is list:
        if len(obj) > len(names):
            raise FieldError(
                f"invalid length {len(obj)}, expected struct {type_name} with {len(names)} elements"
            )
        return dict(zip(names, obj, strict=False))
    raise FieldError(f"invalid type: {describe(obj)}, expected struct {type_name}")
