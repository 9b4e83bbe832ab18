"""contract.keyvalue: request/response types, the operation table and dispatch errors."""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from contract.codec import pack, unpack
from contract.keyvalue import (
    CONTRACT_ID,
    MAX_SET_NAMES_GIVEN,
    OPERATIONS,
    ArgumentError,
    GetResponse,
    IncrementRequest,
    ListAddRequest,
    ListDelRequest,
    ListRangeRequest,
    SetAddRequest,
    SetDelRequest,
    SetRequest,
    TooManyNamesError,
    UnknownOperationError,
    resolve_operation,
)
from provider import store

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "vectors.json").read_text())
KV = [v for v in DATA["vectors"] if v["name"].startswith("kv.")]
STRUCTS = {
    cls.__name__: cls
    for cls in (
        SetRequest,
        IncrementRequest,
        ListAddRequest,
        ListDelRequest,
        ListRangeRequest,
        SetAddRequest,
        SetDelRequest,
        GetResponse,
    )
}


def test_contract_id_and_table() -> None:
    assert CONTRACT_ID == "wasmcloud:keyvalue"
    assert sorted(OPERATIONS) == sorted(
        [
            "Get", "Set", "Del", "Contains", "Increment", "ListAdd", "ListDel", "ListClear",
            "ListRange", "SetAdd", "SetDel", "SetQuery", "SetUnion", "SetIntersection", "SetClear",
        ]
    )  # fmt: skip
    readonly = {name for name, op in OPERATIONS.items() if op.readonly}
    assert readonly == {"Get", "Contains", "ListRange", "SetQuery", "SetUnion", "SetIntersection"}
    for name, op in OPERATIONS.items():
        assert op.name == name and op.wire_name == f"KeyValue.{name}"


@pytest.mark.parametrize("vec", KV, ids=[v["name"] for v in KV])
def test_vector_request_and_response(vec: dict[str, Any]) -> None:
    op = resolve_operation(vec["operation"])
    assert op.input_type == vec["request"]["type"]
    req_bytes = bytes.fromhex(vec["request"]["hex"])
    arg = op.decode_input(req_bytes)
    assert op.encode_input(arg) == req_bytes
    if op.input_type in STRUCTS:
        assert isinstance(arg, STRUCTS[op.input_type])
        assert arg.to_wire() == vec["request"]["decoded"]  # same keys, same order
        assert list(arg.to_wire()) == list(vec["request"]["decoded"])
        assert pack(STRUCTS[op.input_type].from_wire(vec["request"]["decoded"]).to_wire()) == (
            req_bytes
        )
    else:
        assert arg == vec["request"]["decoded"]
    resp_bytes = bytes.fromhex(vec["response"]["hex"])
    result = op.decode_output(resp_bytes)
    assert op.encode_output(result) == resp_bytes
    if vec["response"]["decoded"] is None:
        assert result is None and resp_bytes == b""
    elif isinstance(result, GetResponse):
        assert result.to_wire() == vec["response"]["decoded"]
    else:
        assert result == vec["response"]["decoded"]


def test_structs_accept_positional_arrays_and_defaults() -> None:
    assert SetRequest.from_wire(["k", "v", 5]) == SetRequest("k", "v", 5)
    assert SetRequest.from_wire(["k"]) == SetRequest("k", "", 0)
    assert SetRequest.from_wire({}) == SetRequest("", "", 0)
    assert IncrementRequest.from_wire({"key": "c", "extra": [1]}) == IncrementRequest("c", 0)
    assert ListRangeRequest.from_wire({"listName": "l", "stop": -1}) == ListRangeRequest("l", 0, -1)
    assert GetResponse.from_wire({}) == GetResponse("", False)
    assert ListAddRequest.from_wire({"list_name": "x"}) == ListAddRequest("", "")  # camelCase only


def test_camel_case_wire_names() -> None:
    assert ListAddRequest("fruit", "apple").to_wire() == {"listName": "fruit", "value": "apple"}
    assert ListDelRequest("f", "a").to_wire() == {"listName": "f", "value": "a"}
    assert SetAddRequest("team", "bob").to_wire() == {"setName": "team", "value": "bob"}
    assert SetDelRequest("t", "b").to_wire() == {"setName": "t", "value": "b"}


def _text(type_name: str, detail: str) -> str:
    return f"deserialization: '{type_name}': deserialization: {detail}"


@pytest.mark.parametrize(
    ("method", "arg", "text"),
    [
        ("Get", 5, _text("String", "invalid type for `value`: integer `5`, expected a string")),
        ("Get", b"k", _text("String", "invalid type for `value`: byte array of length 1")),
        ("Get", None, _text("String", "invalid type for `value`: nil, expected a string")),
        ("SetUnion", "team", _text("StringList", "invalid type for `value`: string 'team'")),
        ("SetUnion", ["a", 1], _text("StringList", "invalid type for `value[]`: integer `1`")),
        (
            "Set",
            {"key": "k", "value": "v", "expires": -1},
            _text("SetRequest", "invalid value for `expires`: integer `-1`, expected u32"),
        ),
        (
            "Set",
            {"key": "k", "value": "v", "expires": 2**32},
            _text("SetRequest", "invalid value for `expires`: integer `4294967296`, expected u32"),
        ),
        (
            "Set",
            {"key": "k", "value": 1},
            _text("SetRequest", "invalid type for `value`: integer `1`, expected a string"),
        ),
        (
            "Increment",
            {"key": "c", "value": "x"},
            _text("IncrementRequest", "invalid type for `value`: string 'x', expected i32"),
        ),
        (
            "Increment",
            {"key": "c", "value": True},
            _text("IncrementRequest", "invalid type for `value`: boolean `true`, expected i32"),
        ),
        (
            "Increment",
            {"key": "c", "value": 2**31},
            _text("IncrementRequest", "invalid value for `value`: integer `2147483648`"),
        ),
        (
            "Increment",
            {"key": "c", "value": 1.0},
            _text("IncrementRequest", "invalid type for `value`: floating point `1.0`"),
        ),
        (
            "ListRange",
            {"listName": "l", "start": -(2**31) - 1},
            _text("ListRangeRequest", "invalid value for `start`"),
        ),
        ("ListAdd", "x", _text("ListAddRequest", "invalid type: string 'x', expected struct")),
        ("SetAdd", [1, 2, 3], _text("SetAddRequest", "invalid length 3, expected struct")),
        ("SetDel", {"setName": None}, _text("SetDelRequest", "invalid type for `setName`: nil")),
    ],
)
def test_argument_errors(method: str, arg: object, text: str) -> None:
    with pytest.raises(ArgumentError) as excinfo:
        OPERATIONS[method].decode_input(pack(arg))
    assert str(excinfo.value).startswith(text)
    assert excinfo.value.type_name == OPERATIONS[method].input_type


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\xa5color\x00", b"\x92\xa1a"])
def test_argument_errors_for_undecodable_bytes(data: bytes) -> None:
    with pytest.raises(ArgumentError) as excinfo:
        OPERATIONS["Get"].decode_input(data)
    assert str(excinfo.value).startswith("deserialization: 'String': deserialization: ")


def test_leading_format_marker_is_not_stripped() -> None:
    with pytest.raises(ArgumentError):
        OPERATIONS["Get"].decode_input(b"\xc1" + pack("color"))


def test_struct_from_wire_error_names_the_struct() -> None:
    with pytest.raises(ArgumentError) as excinfo:
        SetRequest.from_wire({"expires": "soon"})
    assert str(excinfo.value) == _text(
        "SetRequest", "invalid type for `expires`: string 'soon', expected u32"
    )


def test_encode_output() -> None:
    assert OPERATIONS["Set"].encode_output(None) == b""
    assert OPERATIONS["Get"].encode_output(GetResponse("", False)).hex() == (
        "82a576616c7565a0a6657869737473c2"
    )
    assert OPERATIONS["Increment"].encode_output(-5) == b"\xfb"
    assert OPERATIONS["ListAdd"].encode_output(2**32 - 1) == b"\xce\xff\xff\xff\xff"
    assert OPERATIONS["SetQuery"].encode_output([]) == b"\x90"
    assert OPERATIONS["SetUnion"].encode_output(iter(["a"])) == b"\x91\xa1a"
    assert OPERATIONS["Del"].encode_output(True) == b"\xc3"


@pytest.mark.parametrize(
    ("method", "result"),
    [
        ("Increment", 2**31),
        ("Increment", -(2**31) - 1),
        ("ListAdd", -1),
        ("SetAdd", 2**32),
        ("Del", 1),
        ("SetQuery", "abc"),
        ("Get", {"value": 1}),
        ("Get", "blue"),
    ],
)
def test_encode_output_refuses_out_of_contract_results(method: str, result: object) -> None:
    with pytest.raises(ArgumentError):
        OPERATIONS[method].encode_output(result)


def test_encode_input_accepts_dataclass_or_map() -> None:
    op = OPERATIONS["Set"]
    expected = bytes.fromhex("83a36b6579a5636f6c6f72a576616c7565a4626c7565a76578706972657300")
    assert op.encode_input(SetRequest("color", "blue")) == expected
    assert op.encode_input({"key": "color", "value": "blue", "expires": 0}) == expected
    assert op.encode_input({"key": "color", "value": "blue"}) == expected
    with pytest.raises(ArgumentError):
        op.encode_input(IncrementRequest("color", 1))
    with pytest.raises(ArgumentError):
        OPERATIONS["SetUnion"].encode_input("team")
    assert unpack(OPERATIONS["SetUnion"].encode_input(("a", "b"))) == ["a", "b"]


def test_decode_output_errors() -> None:
    with pytest.raises(ArgumentError, match="'GetResponse'"):
        OPERATIONS["Get"].decode_output(pack({"value": "v", "exists": "yes"}))
    with pytest.raises(ArgumentError, match="'I32'"):
        OPERATIONS["Increment"].decode_output(pack(2**31))
    assert OPERATIONS["Set"].decode_output(b"") is None


# ---------------------------------------------------------------------- dispatch ----


def test_resolve_known_operations() -> None:
    for name, op in OPERATIONS.items():
        assert resolve_operation(f"KeyValue.{name}") is op


@pytest.mark.parametrize(
    ("operation", "text"),
    [
        ("KeyValue.Nope", "method not handled KeyValue::Nope"),
        ("KeyValue.get", "method not handled KeyValue::get"),
        ("KeyValue.", "method not handled KeyValue::"),
        ("Get", "method not handled _.Get - unknown method"),
        ("", "method not handled _. - unknown method"),
        ("Other.Get", "method not handled Other.Get - unknown method"),
        ("a.b.KeyValue.Get", "method not handled a.b.KeyValue.Get - unknown method"),
        ("KeyValue.Get.Extra", "method not handled KeyValue.Get.Extra - unknown method"),
        ("keyvalue.Get", "method not handled keyvalue.Get - unknown method"),
    ],
)
def test_resolve_unknown_operations(operation: str, text: str) -> None:
    with pytest.raises(UnknownOperationError) as excinfo:
        resolve_operation(operation)
    assert str(excinfo.value) == text


def test_last_dot_split_with_nested_service() -> None:
    # "a.KeyValue.Get" splits into service "a.KeyValue", which is not "KeyValue".
    with pytest.raises(UnknownOperationError, match=r"^method not handled a\.KeyValue\.Get"):
        resolve_operation("a.KeyValue.Get")


# -- name lists: the bound applies while decoding --------------------------------------------

NAME_LISTS = ["SetUnion", "SetIntersection"]
TOO_MANY = f"ERR too many set names (more than {MAX_SET_NAMES_GIVEN})"


def _array_header(count: int) -> bytes:
    return b"\xdd" + count.to_bytes(4, "big")


@pytest.mark.parametrize("method", NAME_LISTS)
def test_an_oversized_name_list_is_refused_from_its_header(method: str) -> None:
    """Only the header is read: the bytes after it are not even valid msgpack, yet the answer
    is the bound, not a decoding error; so refusing costs nothing whatever the argument holds."""
    op = OPERATIONS[method]
    for count in (MAX_SET_NAMES_GIVEN + 1, 2**32 - 1):
        with pytest.raises(TooManyNamesError) as excinfo:
            op.decode_input(_array_header(count) + b"\xc1")
        assert str(excinfo.value) == TOO_MANY
        assert isinstance(excinfo.value, ArgumentError)  # an actor-facing refusal, as before
        assert excinfo.value.given == count
    with pytest.raises(TooManyNamesError):  # a chunked argument, over the 1 MiB message limit
        op.decode_input(_array_header(2**32 - 1) + b"\xa0" * (2 << 20), max_bytes=4 << 20)
    with pytest.raises(TooManyNamesError, match=re.escape(TOO_MANY)):  # not only a header
        op.decode_input(pack([""] * (MAX_SET_NAMES_GIVEN + 1)))


def test_the_decoding_bound_is_the_stores_bound_with_the_same_text() -> None:
    """Refused while decoding or by the store after it, a caller sees one answer."""
    assert store.MAX_SET_NAMES_GIVEN == MAX_SET_NAMES_GIVEN
    with pytest.raises(store.TooMuchWorkError) as from_store:
        store.distinct_names(["x"] * (MAX_SET_NAMES_GIVEN + 1))
    assert str(from_store.value) == TOO_MANY


@pytest.mark.parametrize("method", NAME_LISTS)
def test_name_lists_within_the_bound_decode_as_before(method: str) -> None:
    op = OPERATIONS[method]
    names = ["atk"] * MAX_SET_NAMES_GIVEN
    assert op.decode_input(pack(names)) == names
    assert op.decode_input(pack(["b", "a", "b"])) == ["b", "a", "b"]
    assert op.decode_input(pack([])) == []
    with pytest.raises(ArgumentError, match=r"^deserialization: 'StringList': .*invalid type"):
        op.decode_input(pack("atk"))  # not a list: the decoder's text, unchanged


@pytest.mark.parametrize("method", NAME_LISTS)
def test_an_oversized_array_nested_in_a_name_list_is_refused_while_decoding(method: str) -> None:
    with pytest.raises(ArgumentError) as excinfo:
        OPERATIONS[method].decode_input(pack([[""] * (MAX_SET_NAMES_GIVEN + 1)]))
    assert not isinstance(excinfo.value, TooManyNamesError)
    assert "exceeds max_array_len(200000)" in str(excinfo.value)


def test_other_operations_keep_the_size_derived_array_limit() -> None:
    """Only name lists have an item bound; elsewhere a long array is the usual type error."""
    assert [name for name, op in OPERATIONS.items() if op.max_items is not None] == NAME_LISTS
    with pytest.raises(ArgumentError) as excinfo:
        OPERATIONS["Get"].decode_input(pack([""] * (MAX_SET_NAMES_GIVEN + 1)))
    assert "sequence of length 200001, expected a string" in str(excinfo.value)
