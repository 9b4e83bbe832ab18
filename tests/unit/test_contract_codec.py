"""contract.codec: msgpack encoding conventions and the bounded decoder."""

import msgpack
import pytest

from contract.codec import (
    MAX_MESSAGE_BYTES,
    DecodeError,
    WireError,
    array_length,
    pack,
    pack_json,
    unpack,
    unpack_json,
)


def test_pack_uses_bin_for_bytes_and_compact_ints() -> None:
    assert pack(b"") == b"\xc4\x00"
    assert pack("a") == b"\xa1a"
    assert pack(1000) == b"\xcd\x03\xe8"
    assert pack(-5) == b"\xfb"


def test_round_trip_preserves_types() -> None:
    value = {"msg": b"\x00\x01", "s": "text", "n": -30, "l": ["a"], 1: True}
    assert unpack(pack(value)) == value


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(DecodeError, ValueError)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty message"),
        (b"\x92\x01", "unexpected end of input"),
        (b"\x01\x02", "trailing data: 1 bytes remain"),
        (b"\xc1", "reserved or unknown type marker"),
        (b"\xd4\x01\x02", "max_ext_len"),  # ext types never appear in wasmbus
        (b"\xd6\xff\x00\x00\x00\x00", "max_ext_len"),  # timestamp ext is refused too
        (b"\x81\x91\x01\x02", "unhashable"),
        (b"\x91" * 5000, "nesting too deep"),
        (b"\xdd\xff\xff\xff\xff", "max_array_len"),
    ],
)
def test_malformed_input_raises_decode_error(data: bytes, fragment: str) -> None:
    with pytest.raises(DecodeError) as excinfo:
        unpack(data)
    assert fragment in str(excinfo.value)


def test_oversize_input_is_refused_before_decoding() -> None:
    data = pack(b"x" * MAX_MESSAGE_BYTES)
    assert len(data) > MAX_MESSAGE_BYTES
    with pytest.raises(DecodeError, match="message too large"):
        unpack(data)


def test_message_at_the_limit_decodes() -> None:
    body = b"x" * (MAX_MESSAGE_BYTES - 5)
    data = pack(body)
    assert len(data) == MAX_MESSAGE_BYTES
    assert unpack(data) == body


def test_explicit_max_bytes_for_dechunked_bodies() -> None:
    data = pack("y" * (MAX_MESSAGE_BYTES + 10))
    assert unpack(data, max_bytes=2 * MAX_MESSAGE_BYTES) == "y" * (MAX_MESSAGE_BYTES + 10)
    with pytest.raises(DecodeError):
        unpack(pack("abc"), max_bytes=2)


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536, 200_001])
def test_array_length_reads_the_count_from_the_header(count: int) -> None:
    assert array_length(pack([""] * count)) == count


@pytest.mark.parametrize(
    "data",
    [b"", b"\xdc\x01", b"\xdd\x00\x00\x01", pack("names"), pack({"a": 1}), pack(None)],
    ids=["empty", "truncated-16", "truncated-32", "str", "map", "nil"],
)
def test_array_length_is_none_without_a_whole_array_header(data: bytes) -> None:
    assert array_length(data) is None


def test_array_length_ignores_everything_after_the_header() -> None:
    """It never decodes: a header announcing 2**32 - 1 elements with garbage behind it."""
    assert array_length(b"\xdd\xff\xff\xff\xff\xc1") == 2**32 - 1


def test_lower_max_array_len_refuses_at_the_header_even_nested() -> None:
    assert unpack(pack(["a"] * 10), max_array_len=10) == ["a"] * 10
    for value in (["a"] * 11, {"names": ["a"] * 11}):
        with pytest.raises(DecodeError, match=r"11 exceeds max_array_len\(10\)"):
            unpack(pack(value), max_array_len=10)
    # The announced count is refused before the (missing) elements are read.
    with pytest.raises(DecodeError, match="max_array_len"):
        unpack(b"\xdd\x00\x00\x00\x0b", max_array_len=10)


def test_max_array_len_never_raises_the_size_derived_limit() -> None:
    with pytest.raises(DecodeError, match="max_array_len"):
        unpack(b"\xdd\xff\xff\xff\xff", max_array_len=2**40)


def test_non_bytes_input_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        unpack("not bytes")  # type: ignore[arg-type]


def test_invalid_utf8_string_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        unpack(b"\xa2\xff\xfe")


def test_python_msgpack_matches_pack() -> None:
    obj = {"key": "counter", "value": -30}
    assert pack(obj) == msgpack.packb(obj, use_bin_type=True)


def test_json_helpers_are_compact_and_strict() -> None:
    assert pack_json({"healthy": True, "message": "é"}) == '{"healthy":true,"message":"é"}'.encode()
    assert unpack_json(b'{"a":[1]}') == {"a": [1]}
    for bad in (b"{", b"\xff", "[" * 100_000, None):
        with pytest.raises(WireError, match="invalid JSON"):
            unpack_json(bad)  # type: ignore[arg-type]
    assert issubclass(WireError, DecodeError)
