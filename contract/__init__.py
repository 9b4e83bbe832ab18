"""Wire model of the wasmbus provider protocol and the ``wasmcloud:keyvalue`` contract.

Everything a provider, a fake host or a client must agree on byte for byte lives here, in pure
code with no I/O (except ``contract.client``, which sends through a NATS connection it is
given): the msgpack codec and its limits (``codec``), nkeys (``nkeys``), envelope types and
HostData (``wire``), invocation claims (``claims``) and the KeyValue operations (``keyvalue``).
Keeping it separate from ``provider`` lets tests check it against the spec's vectors in
isolation and lets tools reuse it without pulling in the server.
"""

from contract.claims import (
    ClaimsError,
    invocation_hash,
    issuer_not_trusted_error,
    make_signed_invocation,
    sign_invocation_claims,
    target_mismatch_error,
    unlinked_actor_error,
    validate_invocation,
)
from contract.client import KeyValueClient, KeyValueError
from contract.codec import MAX_MESSAGE_BYTES, DecodeError, pack, unpack
from contract.keyvalue import (
    CONTRACT_ID,
    OPERATIONS,
    ArgumentError,
    GetResponse,
    IncrementRequest,
    ListAddRequest,
    ListDelRequest,
    ListRangeRequest,
    Operation,
    SetAddRequest,
    SetDelRequest,
    SetRequest,
    UnknownOperationError,
    resolve_operation,
)
from contract.nkeys import KeyKind, KeyPair, NKeyError, decode_public_key, verify_signature
from contract.wire import (
    HealthCheckResponse,
    HostData,
    HostDataError,
    Invocation,
    InvocationResponse,
    LinkDefinition,
    Subjects,
    WasmCloudEntity,
    WireError,
    parse_shutdown_host_id,
)

__all__ = [
    "CONTRACT_ID",
    "MAX_MESSAGE_BYTES",
    "OPERATIONS",
    "ArgumentError",
    "ClaimsError",
    "DecodeError",
    "GetResponse",
    "HealthCheckResponse",
    "HostData",
    "HostDataError",
    "IncrementRequest",
    "Invocation",
    "InvocationResponse",
    "KeyKind",
    "KeyPair",
    "KeyValueClient",
    "KeyValueError",
    "LinkDefinition",
    "ListAddRequest",
    "ListDelRequest",
    "ListRangeRequest",
    "NKeyError",
    "Operation",
    "SetAddRequest",
    "SetDelRequest",
    "SetRequest",
    "Subjects",
    "UnknownOperationError",
    "WasmCloudEntity",
    "WireError",
    "decode_public_key",
    "invocation_hash",
    "issuer_not_trusted_error",
    "make_signed_invocation",
    "pack",
    "parse_shutdown_host_id",
    "resolve_operation",
    "sign_invocation_claims",
    "target_mismatch_error",
    "unlinked_actor_error",
    "unpack",
    "validate_invocation",
    "verify_signature",
]
