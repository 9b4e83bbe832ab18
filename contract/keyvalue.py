"""The ``wasmcloud:keyvalue`` contract: argument/result types and the operation table.

This is what lives inside ``Invocation.msg`` and ``InvocationResponse.msg`` (keyvalue-contract
§1-§3). One table, ``OPERATIONS``, drives both sides — the provider decodes inputs and encodes
outputs, the client does the reverse — so the wire names, field order and type rules are
written down exactly once. Argument decoding follows serde/rmp_serde: structs arrive as maps
(missing keys default to ``""``/``0``/``false``, unknown keys are ignored) or positional arrays,
and a value of the wrong type or out of range is an error, reported with the SDK's
double-prefixed text ``deserialization: '<Type>': deserialization: <detail>``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from contract import _fields as f
from contract.codec import MAX_MESSAGE_BYTES, DecodeError, array_length, pack, unpack

__all__ = [
    "CONTRACT_ID",
    "MAX_SET_NAMES_GIVEN",
    "OPERATIONS",
    "SERVICE",
    "ArgumentError",
    "GetResponse",
    "IncrementRequest",
    "ListAddRequest",
    "ListDelRequest",
    "ListRangeRequest",
    "Operation",
    "SetAddRequest",
    "SetDelRequest",
    "SetRequest",
    "TooManyNamesError",
    "UnknownOperationError",
    "resolve_operation",
]

CONTRACT_ID = "wasmcloud:keyvalue"
SERVICE = "KeyValue"


class ArgumentError(ValueError):
    """An operation argument (or result, client side) could not be decoded."""

    def __init__(self, type_name: str, detail: str) -> None:
        super().__init__(f"deserialization: '{type_name}': deserialization: {detail}")
        self.type_name = type_name
        self.detail = detail


#: Set names one ``SetUnion`` / ``SetIntersection`` argument may give, duplicates included: the
#: bound the store enforces too (``provider.store.MAX_SET_NAMES_GIVEN``, README "Limits").
#: Checked here on the array's header, so an oversized argument is refused before one name of
#: it is decoded, instead of after materialising up to a million strings.
MAX_SET_NAMES_GIVEN = 200_000


class TooManyNamesError(ArgumentError):
    """A name list is longer than its operation accepts.

    The text is the store's own refusal (``ERR too many set names …``), not the decoder's
    double-prefixed one: the argument is well formed, it only asks for too much work, and the
    caller must see the same answer whether the bound was met while decoding or after.
    """

    def __init__(self, given: int, limit: int) -> None:
        ValueError.__init__(self, f"ERR too many set names (more than {limit})")
        self.type_name = "StringList"
        self.detail = f"{given} names given, at most {limit} accepted"
        self.given = given
        self.limit = limit


class UnknownOperationError(LookupError):
    """The operation names no method of this contract; ``str(err)`` is the SDK's text."""


def _str(m: dict[Any, Any], wire: str) -> str:
    return f.as_str(m.get(wire, ""), wire)


def _i32(m: dict[Any, Any], wire: str) -> int:
    return f.as_int(m.get(wire, 0), wire, f.I32_MIN, f.I32_MAX, "i32")


# ------------------------------------------------------------------------ structs ----


class _Struct:
    """Shared map/array decoding; subclasses list their wire names in ``_WIRE``."""

    __slots__ = ()
    _WIRE: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_wire(cls, obj: Any) -> Any:
        """From a decoded map or positional array; raises ``ArgumentError``."""
        try:
            return cls._convert(f.struct_fields(obj, cls._WIRE, cls.__name__))
        except f.FieldError as exc:
            raise ArgumentError(cls.__name__, str(exc)) from None

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> Any:
        raise NotImplementedError


@dataclass(slots=True)
class SetRequest(_Struct):
    key: str
    value: str
    expires: int = 0  # seconds until deletion, 0 = never (u32)

    _WIRE: ClassVar[tuple[str, ...]] = ("key", "value", "expires")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> SetRequest:
        return cls(
            _str(m, "key"),
            _str(m, "value"),
            f.as_int(m.get("expires", 0), "expires", 0, f.U32_MAX, "u32"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "expires": self.expires}


@dataclass(slots=True)
class IncrementRequest(_Struct):
    key: str
    value: int  # delta (i32)

    _WIRE: ClassVar[tuple[str, ...]] = ("key", "value")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> IncrementRequest:
        return cls(_str(m, "key"), _i32(m, "value"))

    def to_wire(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value}


@dataclass(slots=True)
class ListAddRequest(_Struct):
    list_name: str
    value: str

    _WIRE: ClassVar[tuple[str, ...]] = ("listName", "value")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> ListAddRequest:
        return cls(_str(m, "listName"), _str(m, "value"))

    def to_wire(self) -> dict[str, Any]:
        return {"listName": self.list_name, "value": self.value}


@dataclass(slots=True)
class ListDelRequest(_Struct):
    list_name: str
    value: str

    _WIRE: ClassVar[tuple[str, ...]] = ("listName", "value")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> ListDelRequest:
        return cls(_str(m, "listName"), _str(m, "value"))

    def to_wire(self) -> dict[str, Any]:
        return {"listName": self.list_name, "value": self.value}


@dataclass(slots=True)
class ListRangeRequest(_Struct):
    list_name: str
    start: int  # inclusive, i32, negative counts from the end
    stop: int  # inclusive, i32

    _WIRE: ClassVar[tuple[str, ...]] = ("listName", "start", "stop")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> ListRangeRequest:
        return cls(_str(m, "listName"), _i32(m, "start"), _i32(m, "stop"))

    def to_wire(self) -> dict[str, Any]:
        return {"listName": self.list_name, "start": self.start, "stop": self.stop}


@dataclass(slots=True)
class SetAddRequest(_Struct):
    set_name: str
    value: str

    _WIRE: ClassVar[tuple[str, ...]] = ("setName", "value")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> SetAddRequest:
        return cls(_str(m, "setName"), _str(m, "value"))

    def to_wire(self) -> dict[str, Any]:
        return {"setName": self.set_name, "value": self.value}


@dataclass(slots=True)
class SetDelRequest(_Struct):
    set_name: str
    value: str

    _WIRE: ClassVar[tuple[str, ...]] = ("setName", "value")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> SetDelRequest:
        return cls(_str(m, "setName"), _str(m, "value"))

    def to_wire(self) -> dict[str, Any]:
        return {"setName": self.set_name, "value": self.value}


@dataclass(slots=True)
class GetResponse(_Struct):
    value: str = ""
    exists: bool = False

    _WIRE: ClassVar[tuple[str, ...]] = ("value", "exists")

    @classmethod
    def _convert(cls, m: dict[Any, Any]) -> GetResponse:
        return cls(_str(m, "value"), f.as_bool(m.get("exists", False), "exists"))

    def to_wire(self) -> dict[str, Any]:
        return {"value": self.value, "exists": self.exists}


# -------------------------------------------------------------- type converters ----
# Each kind of smithy type gets a "from wire" check (decoded msgpack → Python value) and a
# "to wire" check (Python value → msgpack-ready value). Both raise FieldError/ArgumentError.


def _string_from(obj: Any) -> str:
    return f.as_str(obj, "value")


def _string_list_from(obj: Any) -> list[str]:
    return f.as_str_list(obj, "value")


def _bool_from(obj: Any) -> bool:
    return f.as_bool(obj, "value")


def _i32_from(obj: Any) -> int:
    return f.as_int(obj, "value", f.I32_MIN, f.I32_MAX, "i32")


def _u32_from(obj: Any) -> int:
    return f.as_int(obj, "value", 0, f.U32_MAX, "u32")


def _string_list_to(value: Any) -> list[str]:
    # Any iterable of names is accepted, but a bare string is almost certainly a caller bug
    # (it would silently become a list of characters).
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise f.type_error("value", value, "a sequence of strings")
    return f.as_str_list(list(value), "value")


def _struct_from(cls: type[_Struct]) -> Callable[[Any], Any]:
    def convert(obj: Any) -> Any:
        return cls._convert(f.struct_fields(obj, cls._WIRE, cls.__name__))

    return convert


def _struct_to(cls: type[_Struct]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if isinstance(value, cls):
            return value.to_wire()  # type: ignore[attr-defined]
        if isinstance(value, dict):
            return cls.from_wire(value).to_wire()  # validates a hand-written map
        raise f.type_error("value", value, cls.__name__)

    return convert


_CONVERTERS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "String": (_string_from, _string_from),
    "StringList": (_string_list_from, _string_list_to),
    "Boolean": (_bool_from, _bool_from),
    "I32": (_i32_from, _i32_from),
    "U32": (_u32_from, _u32_from),
}
for _cls in (
    SetRequest,
    IncrementRequest,
    ListAddRequest,
    ListDelRequest,
    ListRangeRequest,
    SetAddRequest,
    SetDelRequest,
    GetResponse,
):
    _CONVERTERS[_cls.__name__] = (_struct_from(_cls), _struct_to(_cls))


# -------------------------------------------------------------------- operations ----

UNIT = "Unit"  # output type of Set: a zero-length msg, not msgpack nil


@dataclass(slots=True, frozen=True)
class Operation:
    """One method of the KeyValue service and how its argument and result travel."""

    name: str
    input_type: str
    output_type: str
    readonly: bool = False
    #: Most elements the argument's (top-level or nested) arrays may have; None: the codec's
    #: size-derived default. Set for name lists, whose length bounds the work of a call.
    max_items: int | None = None
    _input_from: Callable[[Any], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Resolve the hot-path converter once instead of a table lookup per call.
        object.__setattr__(self, "_input_from", _CONVERTERS[self.input_type][0])

    @property
    def wire_name(self) -> str:
        return f"{SERVICE}.{self.name}"

    def decode_input(self, msg: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
        """Argument bytes → Python value (str, list[str] or request dataclass).

        ``max_bytes`` is raised only for a chunked argument (fetched from the object store).
        A name list longer than ``max_items`` is refused with :class:`TooManyNamesError` from
        its header alone, in microseconds, whatever its size.
        """
        limit = self.max_items
        if limit is not None and len(msg) <= max_bytes:
            given = array_length(msg)
            if given is not None and given > limit:
                raise TooManyNamesError(given, limit)
        try:
            return self._input_from(unpack(msg, max_bytes=max_bytes, max_array_len=limit))
        except (DecodeError, f.FieldError) as exc:
            raise ArgumentError(self.input_type, str(exc)) from None

    def encode_input(self, arg: Any) -> bytes:
        """Python value → argument bytes (client side)."""
        try:
            return pack(_CONVERTERS[self.input_type][1](arg))
        except f.FieldError as exc:
            raise ArgumentError(self.input_type, str(exc)) from None

    def encode_output(self, result: Any) -> bytes:
        """Handler result → reply bytes. ``Set`` → ``b""``; out-of-range ints are refused.

        A result that does not fit its smithy type would make the actor's decoder fail, so it
        is better reported as a provider error (``ArgumentError``) than sent.
        """
        if self.output_type == UNIT:
            return b""
        try:
            return pack(_CONVERTERS[self.output_type][1](result))
        except f.FieldError as exc:
            raise ArgumentError(self.output_type, str(exc)) from None

    def decode_output(self, msg: bytes) -> Any:
        """Reply bytes → Python value (client side); ``Set`` → ``None``."""
        if self.output_type == UNIT:
            return None
        try:
            return _CONVERTERS[self.output_type][0](unpack(msg))
        except (DecodeError, f.FieldError) as exc:
            raise ArgumentError(self.output_type, str(exc)) from None


OPERATIONS: dict[str, Operation] = {
    op.name: op
    for op in (
        Operation("Get", "String", "GetResponse", readonly=True),
        Operation("Set", "SetRequest", UNIT),
        Operation("Del", "String", "Boolean"),
        Operation("Contains", "String", "Boolean", readonly=True),
        Operation("Increment", "IncrementRequest", "I32"),
        Operation("ListAdd", "ListAddRequest", "U32"),
        Operation("ListDel", "ListDelRequest", "Boolean"),
        Operation("ListClear", "String", "Boolean"),
        Operation("ListRange", "ListRangeRequest", "StringList", readonly=True),
        Operation("SetAdd", "SetAddRequest", "U32"),
        Operation("SetDel", "SetDelRequest", "U32"),
        Operation("SetQuery", "String", "StringList", readonly=True),
        Operation(
            "SetUnion", "StringList", "StringList", readonly=True, max_items=MAX_SET_NAMES_GIVEN
        ),
        Operation(
            "SetIntersection",
            "StringList",
            "StringList",
            readonly=True,
            max_items=MAX_SET_NAMES_GIVEN,
        ),
        Operation("SetClear", "String", "Boolean"),
    )
}

_BY_WIRE_NAME: dict[str, Operation] = {op.wire_name: op for op in OPERATIONS.values()}


def resolve_operation(operation: str) -> Operation:
    """Map ``KeyValue.<Method>`` to its Operation, or raise with the SDK's error text.

    The SDK splits at the *last* dot; with no dot the service is ``_``.
    """
    op = _BY_WIRE_NAME.get(operation)
    if op is not None:
        return op
    service, dot, method = operation.rpartition(".")
    if not dot:
        service = "_"
    if service != SERVICE:
        raise UnknownOperationError(f"method not handled {service}.{method} - unknown method")
    raise UnknownOperationError(f"method not handled {SERVICE}::{method}")
