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
    "array_length",
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


def array_length(data: bytes) -> int | None:
    """The element count a msgpack array header at the start of ``data`` announces, else None.

    Reading the header costs nothing, whereas decoding the array materialises every element
    first: a caller with a bound on the count checks it here and refuses an oversized array
    before any decoding work. A truncated header is None (``unpack`` reports it).
    """
    if not data:
        return None
    marker = data[0]
    if 0x90 <= marker <= 0x9F:  # fixarray
        return marker & 0x0F
    if marker == 0xDC and len(data) >= 3:  # array 16
        return int.from_bytes(data[1:3], "big")
    if marker == 0xDD and len(data) >= 5:  # array 32
        return int.from_bytes(data[1:5], "big")
    return None


def unpack(
    data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES, max_array_len: int | None = None
) -> Any:
    """Decode exactly one msgpack value from ``data``.

    ``max_array_len`` lowers the per-array element limit for callers that know the value's
    shape (a list of names, say): msgpack refuses a longer array at its header, before it
    allocates the elements.

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
    if max_array_len is not None and max_array_len < kwargs["max_array_len"]:
        kwargs = {**kwargs, "max_array_len": max_array_len}
    try:
        return msgpack.unpackb(data, **kwargs)
    except msgpack.ExtraData as exc:
        # msgpack sets ``extra`` (the bytes after the value); its stubs leave it out.
        extra: bytes = exc.extra  # type: ignore[attr-defined]
        raise DecodeError(
            f"trailing data: {len(extra)} bytes remain after the msgpack value"
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
