"""wasmbus envelope types: what travels on the provider's NATS subjects (protocol spec §4-§10).

Decoders are strict about types (serde semantics: a field of the wrong type is an error, unknown
keys are ignored, maps and positional arrays are both accepted) and raise only ``DecodeError``
(``WireError`` is a subclass) so the provider can always answer ``deser error: …`` instead of
crashing. Encoders reproduce the exact key order of the peer being imitated, because the test
vectors — and anyone diffing captures — compare bytes.

``LinkDefinition`` (``contract.links``) and ``HostData`` (``contract.hostdata``) live in their
own modules and are re-exported here, so the whole wire model imports from one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from contract import _fields as f
from contract.codec import WireError, pack, pack_json, unpack, unpack_json
from contract.hostdata import DEFAULT_NATS_URL, TEST_MODE_HOST_ID, HostData, HostDataError
from contract.links import LinkDefinition

__all__ = [
    "DEFAULT_NATS_URL",
    "HEALTH_REQUEST",
    "RPC_QUEUE_GROUP",
    "SHUTDOWN_ACK",
    "TEST_MODE_HEALTH_REQUEST",
    "TEST_MODE_HOST_ID",
    "HealthCheckResponse",
    "HostData",
    "HostDataError",
    "Invocation",
    "InvocationResponse",
    "LinkDefinition",
    "Subjects",
    "WasmCloudEntity",
    "WireError",
    "parse_shutdown_host_id",
    "shutdown_request",
]

RPC_QUEUE_GROUP = "rpc"
SHUTDOWN_ACK = b"shutting down"

EntityOrder = Literal["host", "sdk"]


# --------------------------------------------------------------------------- entities ----


@dataclass(slots=True, frozen=True)
class WasmCloudEntity:
    """One end of an invocation: an actor (``M…`` key) or a provider (key + contract + link)."""

    public_key: str = ""
    link_name: str = ""
    contract_id: str = ""

    _FIELDS = ("public_key", "link_name", "contract_id")

    def url(self) -> str:
        """The ``wasmbus://`` URL the claims sign (spec §5.2).

        Actors are addressed by key alone; providers by contract and link, which yields the
        three-slash form ``wasmbus:///default/V…`` when the contract id is empty (test harness).
        """
        key = self.public_key
        if key[:1].upper() == "M":
            return f"wasmbus://{key}"
        contract = self.contract_id.replace(":", "/").replace(" ", "_").lower()
        link = self.link_name.replace(" ", "_").lower()
        return f"wasmbus://{contract}/{link}/{key}"

    def to_dict(self, order: EntityOrder = "sdk") -> dict[str, str]:
        """Map form. ``order="host"`` is the OTP host's key order, ``"sdk"`` the Rust struct's."""
        if order == "host":
            return {
                "public_key": self.public_key,
                "contract_id": self.contract_id,
                "link_name": self.link_name,
            }
        return {
            "public_key": self.public_key,
            "link_name": self.link_name,
            "contract_id": self.contract_id,
        }

    @classmethod
    def from_obj(cls, obj: Any) -> WasmCloudEntity:
        """From a decoded map or positional array; ``contract_id`` is required (as in Rust)."""
        try:
            return cls._from_obj(obj, "entity")
        except f.FieldError as exc:
            raise WireError(str(exc)) from None

    @classmethod
    def _from_obj(cls, obj: Any, where: str) -> WasmCloudEntity:
        m = f.struct_fields(obj, cls._FIELDS, "WasmCloudEntity")
        if "contract_id" not in m:
            raise f.missing(f"{where}.contract_id")
        return cls(
            f.as_str(m.get("public_key", ""), f"{where}.public_key"),
            f.as_str(m.get("link_name", ""), f"{where}.link_name"),
            f.as_str(m["contract_id"], f"{where}.contract_id"),
        )


# ------------------------------------------------------------------------- invocation ----

_INVOCATION_FIELDS = (
    "origin",
    "target",
    "operation",
    "msg",
    "id",
    "encoded_claims",
    "host_id",
    "content_length",
    "traceContext",
)


@dataclass(slots=True)
class Invocation:
    """An RPC request from a host (or another provider) to this provider (spec §5.2)."""

    origin: WasmCloudEntity
    target: WasmCloudEntity
    operation: str
    msg: bytes
    id: str = ""
    encoded_claims: str = ""
    host_id: str = ""
    content_length: int | None = None
    trace_context: dict[str, str] | None = None

    @classmethod
    def decode(cls, data: bytes) -> Invocation:
        """Decode an msgpack Invocation; raises ``DecodeError``/``WireError`` with the reason."""
        obj = unpack(data)
        try:
            return cls._from_obj(obj)
        except f.FieldError as exc:
            raise WireError(str(exc)) from None

    @classmethod
    def _from_obj(cls, obj: Any) -> Invocation:
        m = f.struct_fields(obj, _INVOCATION_FIELDS, "Invocation")
        get = m.get
        origin = get("origin")
        if origin is None:
            raise f.missing("origin")
        target = get("target")
        if target is None:
            raise f.missing("target")
        msg = get("msg", b"")
        if type(msg) is not bytes:
            raise f.type_error("msg", msg, "a byte array (msgpack bin)")
        content_length = get("content_length")
        if content_length is not None:
            f.as_int(content_length, "content_length", 0, f.U64_MAX, "u64")
        trace = get("traceContext")
        if trace is not None:
            f.as_str_map(trace, "traceContext")
        return cls(
            WasmCloudEntity._from_obj(origin, "origin"),
            WasmCloudEntity._from_obj(target, "target"),
            f.as_str(get("operation", ""), "operation"),
            msg,
            f.as_str(get("id", ""), "id"),
            f.as_str(get("encoded_claims", ""), "encoded_claims"),
            f.as_str(get("host_id", ""), "host_id"),
            content_length,
            trace,
        )

    def to_dict(self, entity_order: EntityOrder = "host") -> dict[str, Any]:
        d: dict[str, Any] = {
            "origin": self.origin.to_dict(entity_order),
            "target": self.target.to_dict(entity_order),
            "operation": self.operation,
            "msg": self.msg,
            "id": self.id,
            "encoded_claims": self.encoded_claims,
            "host_id": self.host_id,
        }
        if self.content_length is not None:
            d["content_length"] = self.content_length
        if self.trace_context is not None:
            d["traceContext"] = self.trace_context
        return d

    def encode(self, entity_order: EntityOrder = "host") -> bytes:
        """msgpack bytes; ``entity_order="host"`` = OTP host layout, ``"sdk"`` = wasmbus-rpc."""
        return pack(self.to_dict(entity_order))

    @property
    def is_chunked(self) -> bool:
        """True when the body was moved to the object store (spec §11 receiver rule)."""
        return self.content_length is not None and self.content_length > len(self.msg)


_RESPONSE_FIELDS = ("msg", "invocation_id", "error", "content_length")


@dataclass(slots=True)
class InvocationResponse:
    """The reply to an Invocation (spec §5.3); failure is signalled by ``error`` being set."""

    msg: bytes
    invocation_id: str
    error: str | None = None
    content_length: int | None = None  # None → len(msg), filled in on construction

    def __post_init__(self) -> None:
        if self.content_length is None:
            self.content_length = len(self.msg)

    @classmethod
    def success(cls, invocation_id: str, msg: bytes) -> InvocationResponse:
        return cls(msg, invocation_id, None, len(msg))

    @classmethod
    def failure(cls, invocation_id: str, text: str) -> InvocationResponse:
        return cls(b"", invocation_id, text, 0)

    @property
    def ok(self) -> bool:
        return self.error is None

    def encode(self) -> bytes:
        """Key order msg, invocation_id, error (only on failure), content_length — as the SDK."""
        if self.error is None:
            return pack(
                {
                    "msg": self.msg,
                    "invocation_id": self.invocation_id,
                    "content_length": self.content_length,
                }
            )
        return pack(
            {
                "msg": self.msg,
                "invocation_id": self.invocation_id,
                "error": self.error,
                "content_length": self.content_length,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> InvocationResponse:
        obj = unpack(data)
        try:
            m = f.struct_fields(obj, _RESPONSE_FIELDS, "InvocationResponse")
            msg = f.as_bytes(m.get("msg", b""), "msg")
            invocation_id = f.as_str(m.get("invocation_id", ""), "invocation_id")
            error = m.get("error")
            if error is not None:
                f.as_str(error, "error")
            length = m.get("content_length")
            if length is not None:
                f.as_int(length, "content_length", 0, f.U64_MAX, "u64")
        except f.FieldError as exc:
            raise WireError(str(exc)) from None
        return cls(msg, invocation_id, error, length)


# --------------------------------------------------------------------------- health ----


@dataclass(slots=True)
class HealthCheckResponse:
    """Reply to a health request (spec §9); ``message`` is omitted from the wire when None."""

    healthy: bool
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.message is None:
            return {"healthy": self.healthy}
        return {"healthy": self.healthy, "message": self.message}

    def encode_msgpack(self) -> bytes:
        return pack(self.to_dict())

    def encode_json(self) -> bytes:
        """Compact JSON as serde_json writes it (test mode)."""
        return pack_json(self.to_dict())

    @classmethod
    def from_obj(cls, obj: Any) -> HealthCheckResponse:
        try:
            m = f.struct_fields(obj, ("healthy", "message"), "HealthCheckResponse")
            healthy = f.as_bool(m.get("healthy", False), "healthy")
            message = m.get("message")
            if message is not None:
                f.as_str(message, "message")
        except f.FieldError as exc:
            raise WireError(str(exc)) from None
        return cls(healthy, message)

    @classmethod
    def decode_msgpack(cls, data: bytes) -> HealthCheckResponse:
        return cls.from_obj(unpack(data))

    @classmethod
    def decode_json(cls, data: bytes | str) -> HealthCheckResponse:
        return cls.from_obj(unpack_json(data))


#: The body of the OTP host's health request (msgpack); the provider ignores it, but tools that
#: ask for health (the CLI, the test kit) send exactly what a host sends.
HEALTH_REQUEST = pack({"placeholder": True})
#: The test-mode harness (``wasmcloud-test-util``) asks with JSON ``{}``.
TEST_MODE_HEALTH_REQUEST = b"{}"


# ------------------------------------------------------------------------- shutdown ----


def shutdown_request(host_id: str | None) -> bytes:
    """The body of a host's shutdown request: JSON ``{"host_id": …}``, or the empty body of
    hosts before 0.59 (``host_id=None``). A provider shuts down only for its own host id, so
    several instances of one provider can share the shutdown subject."""
    return b"" if host_id is None else json.dumps({"host_id": host_id}).encode()


def parse_shutdown_host_id(body: bytes) -> str:
    """``host_id`` of a shutdown request, or ``""`` when absent or unparseable.

    Mirrors the SDK's ``unwrap_or_default``: anything that is not ``{"host_id": "<str>"}``
    (including the empty body of hosts < 0.59) means "no host id", which the provider treats
    as "shut down".
    """
    if not body:
        return ""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError, TypeError):
        return ""
    if type(obj) is dict:
        host_id = obj.get("host_id", "")
        if type(host_id) is str:
            return host_id
    return ""


# ------------------------------------------------------------------------- subjects ----


class Subjects:
    """The NATS subjects of one provider instance (spec §4), computed once."""

    __slots__ = ("health", "link_del", "link_name", "link_put", "prefix", "provider_key", "rpc",
                 "shutdown")  # fmt: skip

    def __init__(self, lattice_prefix: str, provider_key: str, link_name: str) -> None:
        self.prefix = lattice_prefix
        self.provider_key = provider_key
        self.link_name = link_name
        self.rpc = f"wasmbus.rpc.{lattice_prefix}.{provider_key}.{link_name}"
        self.link_put = f"{self.rpc}.linkdefs.put"
        self.link_del = f"{self.rpc}.linkdefs.del"
        self.health = f"{self.rpc}.health"
        self.shutdown = f"{self.rpc}.shutdown"

    def __repr__(self) -> str:
        return f"Subjects(rpc={self.rpc!r})"
