"""msgpack encoding with hard input limits.

Every byte that reaches the provider from NATS is attacker-controlled (anyone who can publish on
the lattice can send an RPC), so decoding is bounded: the input size is capped and msgpack's
per-object limits are derived from that cap so a tiny payload cannot announce a 4 GiB string or
array. Every decoder failure is turned into one exception type, ``DecodeError``, whose text is
readable enough to go into an ``InvocationResponse.error`` (``deser error: deserialization: …``).

Encoding follows rmp_serde's "named" conventions (protocol spec §5.1), which python-msgpack
reproduces byte for byte with ``use_bin_type=True``: ``bytes`` → bin, ``str`` → str, integers in
their most compact form.
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

__all__ = [
    "MAX_MESSAGE_BYTES",
    "DecodeError",
    "WireError",
    "pack",
    "pack_json",
    "unpack",
    "unpack_json",
]

#: Largest payload ``unpack`` accepts by default: 1 MiB, the NATS server's default
#: ``max_payload`` and therefore the largest message that can normally reach a subscriber. The
#: biggest legitimate body (an un-chunked 900 KiB argument plus envelope and claims) fits with
#: ~100 KiB to spare; larger arguments travel through the object store (protocol spec §11) and
#: callers decoding those pass an explicit ``max_bytes``.
MAX_MESSAGE_BYTES = 1024 * 1024


class DecodeError(ValueError):
    """A payload could not be decoded; ``str(err)`` is the decoder's explanation."""


class WireError(DecodeError):
    """A payload decoded, but its value does not have the expected shape or field types."""


def pack(obj: Any) -> bytes:
    """Encode ``obj`` the way rmp_serde would (bytes as bin, compact integers)."""
    return msgpack.packb(obj, use_bin_type=True)


def _limits(max_bytes: int) -> dict[str, Any]:
    # A str/bin cannot be longer than the whole input and every array element / map entry takes
    # at least one byte, so these limits never reject a well-formed message of allowed size.
    # Extension types are never used by wasmbus, so any ext (including the timestamp ext) fails.
    return {
        "raw": False,
        "strict_map_key": False,
        "max_str_len": max_bytes,
        "max_bin_len": max_bytes,
        "max_array_len": max_bytes,
        "max_map_len": max_bytes // 2,
        "max_ext_len": 0,
    }


_DEFAULT_LIMITS = _limits(MAX_MESSAGE_BYTES)


def unpack(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode exactly one msgpack value from ``data``.

    Raises ``DecodeError`` for oversize input, truncated or malformed data, ext types, unhashable
    map keys, excessive nesting and trailing bytes after the value — never anything else, so
    callers can map it directly to an error reply.
    """
    size = len(data)
    if size > max_bytes:
        raise DecodeError(f"message too large: {size} bytes exceeds the {max_bytes} byte limit")
    if size == 0:
        raise DecodeError("unexpected end of input: empty message")
    kwargs = _DEFAULT_LIMITS if max_bytes == MAX_MESSAGE_BYTES else _limits(max_bytes)
    try:
        return msgpack.unpackb(data, **kwargs)
    except msgpack.ExtraData as exc:
        raise DecodeError(
            f"trailing data: {len(exc.extra)} bytes remain after the msgpack value"
        ) from None
    except msgpack.StackError:
        raise DecodeError("invalid msgpack: nesting too deep") from None
    except msgpack.FormatError:
        raise DecodeError("invalid msgpack: reserved or unknown type marker") from None
    except ValueError as exc:
        text = str(exc)
        if "incomplete input" in text:
            text = "unexpected end of input"
        raise DecodeError(f"invalid msgpack: {text}") from None
    except Exception as exc:  # TypeError (unhashable key), RecursionError, OverflowError, ...
        raise DecodeError(f"invalid msgpack: {exc}") from None


def pack_json(obj: Any) -> bytes:
    """Compact JSON as serde_json writes it (test-mode payloads, HostData): no spaces, raw UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def unpack_json(data: bytes | str) -> Any:
    """Parse JSON, raising ``WireError`` (never a bare ``ValueError``/``RecursionError``)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError, TypeError) as exc:
        raise WireError(f"invalid JSON: {exc}") from None
