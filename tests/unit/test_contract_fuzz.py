"""Property tests: hostile input only ever produces the documented exception types.

The provider turns DecodeError/ClaimsError/ArgumentError into error replies; any other
exception would escape as a crash of the message handler, so these properties are the
robustness contract of the decode/validate hot path.
"""

import contextlib
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.claims import ClaimsError, validate_invocation
from contract.codec import DecodeError, pack
from contract.keyvalue import OPERATIONS, ArgumentError, UnknownOperationError, resolve_operation
from contract.wire import (
    HostData,
    HostDataError,
    Invocation,
    InvocationResponse,
    LinkDefinition,
    parse_shutdown_host_id,
)
from tests.harness import strategies

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "vectors.json").read_text())
V = {v["name"]: v for v in DATA["vectors"]}
IAT = DATA["constants"]["iat"]
ENVELOPES = [
    bytes.fromhex(V["invocation.host_style.get"]["hex"]),
    bytes.fromhex(V["invocation.rpcclient_style.increment"]["hex"]),
    bytes.fromhex(V["kv.Set.3"]["envelope"]["invocation_hex"]),
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = strategies.msgpack_values(allow_nan=True)


def _decode_and_validate(data: bytes) -> None:
    try:
        inv = Invocation.decode(data)
    except DecodeError:
        return
    with contextlib.suppress(ClaimsError):
        validate_invocation(inv, now=IAT)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    _decode_and_validate(data)


@FUZZ
@given(
    st.sampled_from(ENVELOPES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_byte_flips_of_valid_envelopes(envelope: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(envelope)
    for pos, value in flips:
        data[pos % len(data)] = value
    _decode_and_validate(bytes(data))


@FUZZ
@given(st.sampled_from(ENVELOPES), st.integers(0, 2000), st.binary(max_size=16))
def test_truncation_and_insertion(envelope: bytes, pos: int, junk: bytes) -> None:
    pos %= len(envelope)
    _decode_and_validate(envelope[:pos])
    _decode_and_validate(envelope[:pos] + junk + envelope[pos:])
    _decode_and_validate(envelope + junk)


FIELDS = ["origin", "target", "operation", "msg", "id", "encoded_claims", "host_id",
          "content_length", "traceContext"]  # fmt: skip


@FUZZ
@given(st.sampled_from(ENVELOPES), st.sampled_from(FIELDS), msgpack_values)
def test_field_replaced_by_random_value(envelope: bytes, field: str, value: Any) -> None:
    obj = Invocation.decode(envelope).to_dict()
    obj[field] = value
    _decode_and_validate(pack(obj))


@FUZZ
@given(st.sampled_from(ENVELOPES), st.sampled_from(["origin", "target"]), msgpack_values)
def test_entity_field_replaced(envelope: bytes, which: str, value: Any) -> None:
    obj = Invocation.decode(envelope).to_dict()
    key = ["public_key", "link_name", "contract_id"][len(repr(value)) % 3]
    obj[which][key] = value
    _decode_and_validate(pack(obj))


@FUZZ
@given(st.sampled_from(ENVELOPES), st.data())
def test_mutated_tokens(envelope: bytes, data: st.DataObject) -> None:
    inv = Invocation.decode(envelope)
    token = inv.encoded_claims
    pos = data.draw(st.integers(0, len(token)))
    insert = data.draw(st.text(max_size=6))
    cut = data.draw(st.integers(0, 6))
    inv.encoded_claims = token[:pos] + insert + token[pos + cut :]
    with contextlib.suppress(ClaimsError):
        validate_invocation(inv, now=IAT)


@FUZZ
@given(st.text(max_size=300))
def test_random_tokens(token: str) -> None:
    inv = Invocation.decode(ENVELOPES[0])
    inv.encoded_claims = token
    with contextlib.suppress(ClaimsError):
        validate_invocation(inv, now=IAT)


@FUZZ
@given(st.sampled_from(sorted(OPERATIONS)), msgpack_values)
def test_operation_inputs_and_outputs(method: str, value: Any) -> None:
    op = OPERATIONS[method]
    payload = pack(value)
    for decode in (op.decode_input, op.decode_output):
        with contextlib.suppress(ArgumentError):
            decode(payload)
    with contextlib.suppress(ArgumentError):
        op.encode_output(value)


@FUZZ
@given(st.text(max_size=40))
def test_resolve_operation(name: str) -> None:
    try:
        resolve_operation(name)
    except UnknownOperationError as exc:
        assert str(exc).startswith("method not handled ")


@FUZZ
@given(msgpack_values | st.binary(max_size=64))
def test_other_decoders(value: Any) -> None:
    payload = value if isinstance(value, bytes) else pack(value)
    for decode in (InvocationResponse.decode, LinkDefinition.decode_msgpack):
        with contextlib.suppress(DecodeError):
            decode(payload)
    with contextlib.suppress(DecodeError):
        LinkDefinition.decode_json(payload)
    assert isinstance(parse_shutdown_host_id(payload), str)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_hostdata_lines(line: str | bytes) -> None:
    with contextlib.suppress(HostDataError):
        HostData.from_stdin_line(line)


@FUZZ
@given(st.dictionaries(st.sampled_from(
    ["host_id", "env_values", "link_definitions", "cluster_issuers", "config_json",
     "default_rpc_timeout_ms", "structured_logging", "log_level"]), msgpack_values))  # fmt: skip
def test_hostdata_json_shapes(obj: dict[str, Any]) -> None:
    try:
        text = json.dumps(obj, default=lambda b: b.hex())
    except ValueError:
        return
    with contextlib.suppress(HostDataError):
        HostData.from_json(text)
