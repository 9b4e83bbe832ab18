"""contract.wire: envelopes, link definitions, health, shutdown, subjects and HostData."""

import base64
import json
from pathlib import Path

import pytest

from contract.codec import DecodeError, pack, unpack
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

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "vectors.json").read_text())
V = {v["name"]: v for v in DATA["vectors"]}
KEYS = DATA["keys"]
ACTOR = KEYS["actor"]["public_key"]
PROVIDER = KEYS["provider"]["public_key"]
CLUSTER = KEYS["cluster"]["public_key"]


def vec_bytes(name: str) -> bytes:
    return bytes.fromhex(V[name]["hex"])


# ------------------------------------------------------------------------- entities ----


def test_entity_urls() -> None:
    assert WasmCloudEntity(ACTOR, "", "").url() == f"wasmbus://{ACTOR}"
    assert WasmCloudEntity("mlower", "x", "y").url() == "wasmbus://mlower"
    provider = WasmCloudEntity(PROVIDER, "default", "wasmcloud:keyvalue")
    assert provider.url() == f"wasmbus://wasmcloud/keyvalue/default/{PROVIDER}"
    assert WasmCloudEntity(PROVIDER, "default", "").url() == f"wasmbus:///default/{PROVIDER}"
    spaced = WasmCloudEntity(PROVIDER, "My Link", "Acme:Key Value")
    assert spaced.url() == f"wasmbus://acme/key_value/my_link/{PROVIDER}"


def test_entity_url_matches_vector_jwt_urls() -> None:
    jwt = V["invocation.host_style.get"]["jwt"]
    inv = Invocation.decode(vec_bytes("invocation.host_style.get"))
    assert inv.origin.url() == jwt["origin_url"]
    assert f"{inv.target.url()}/{inv.operation}" == jwt["target_url"]
    jwt2 = V["invocation.rpcclient_style.increment"]["jwt"]
    inv2 = Invocation.decode(vec_bytes("invocation.rpcclient_style.increment"))
    assert f"{inv2.target.url()}/{inv2.operation}" == jwt2["target_url"]
    assert jwt2["target_url"].startswith("wasmbus:///default/")


def test_entity_from_obj_forms() -> None:
    expected = WasmCloudEntity(PROVIDER, "default", "wasmcloud:keyvalue")
    assert WasmCloudEntity.from_obj(expected.to_dict("host")) == expected
    assert WasmCloudEntity.from_obj(expected.to_dict("sdk")) == expected
    assert WasmCloudEntity.from_obj([PROVIDER, "default", "wasmcloud:keyvalue"]) == expected
    assert WasmCloudEntity.from_obj({"contract_id": "c", "extra": 1}) == WasmCloudEntity(
        "", "", "c"
    )
    assert list(expected.to_dict("host")) == ["public_key", "contract_id", "link_name"]
    assert list(expected.to_dict("sdk")) == ["public_key", "link_name", "contract_id"]


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"public_key": "M"}, "missing field `entity.contract_id`"),
        ([PROVIDER, "default"], "missing field `entity.contract_id`"),
        ([1, 2, 3, 4], "invalid length 4"),
        ({"contract_id": 5}, "invalid type for `entity.contract_id`: integer `5`"),
        ({"contract_id": "", "link_name": None}, "`entity.link_name`: nil"),
        ("str", "expected struct WasmCloudEntity"),
    ],
)
def test_entity_from_obj_rejects(obj: object, fragment: str) -> None:
    with pytest.raises(WireError) as excinfo:
        WasmCloudEntity.from_obj(obj)
    assert fragment in str(excinfo.value)


# ----------------------------------------------------------------------- invocation ----


def test_host_style_invocation_decodes_and_re_encodes() -> None:
    data = vec_bytes("invocation.host_style.get")
    inv = Invocation.decode(data)
    assert inv.origin == WasmCloudEntity(ACTOR, "", "")
    assert inv.target == WasmCloudEntity(PROVIDER, "default", "wasmcloud:keyvalue")
    assert inv.operation == "KeyValue.Get"
    assert inv.msg == bytes.fromhex("a5636f6c6f72")
    assert inv.id == "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    assert inv.host_id == CLUSTER
    assert inv.content_length == 6
    assert inv.trace_context is None
    assert not inv.is_chunked
    assert inv.encode() == data
    assert inv.encode(entity_order="host") == data


def test_rpcclient_style_invocation_re_encodes_in_sdk_order() -> None:
    data = vec_bytes("invocation.rpcclient_style.increment")
    inv = Invocation.decode(data)
    assert inv.target.contract_id == ""
    assert inv.encode(entity_order="sdk") == data
    assert inv.encode(entity_order="host") != data


def test_chunked_marker() -> None:
    data = vec_bytes("invocation.chunked_marker")
    inv = Invocation.decode(data)
    assert inv.msg == b""
    assert inv.content_length == 1_000_000
    assert inv.is_chunked
    assert inv.encode() == data


def test_invocation_minimal_and_optional_fields() -> None:
    origin = {"public_key": ACTOR, "contract_id": ""}
    target = {"contract_id": "wasmcloud:keyvalue"}
    inv = Invocation.decode(pack({"origin": origin, "target": target}))
    assert (inv.operation, inv.msg, inv.id, inv.encoded_claims, inv.host_id) == (
        "",
        b"",
        "",
        "",
        "",
    )
    assert inv.content_length is None
    assert not inv.is_chunked
    inv2 = Invocation.decode(
        pack({"origin": origin, "target": target, "content_length": None, "traceContext": None})
    )
    assert inv2.content_length is None and inv2.trace_context is None
    inv3 = Invocation.decode(pack({"origin": origin, "target": target, "traceContext": {"a": "b"}}))
    assert inv3.trace_context == {"a": "b"}
    assert unpack(inv3.encode())["traceContext"] == {"a": "b"}
    assert "content_length" not in unpack(inv.encode())


def test_invocation_positional_array() -> None:
    inv = Invocation.decode(vec_bytes("invocation.host_style.get"))
    arr = [inv.origin.to_dict(), inv.target.to_dict(), inv.operation, inv.msg, inv.id]
    assert Invocation.decode(pack(arr)).msg == inv.msg


def _envelope(**changes: object) -> bytes:
    obj = unpack(vec_bytes("invocation.host_style.get"))
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return pack(obj)


@pytest.mark.parametrize(
    ("changes", "text"),
    [
        ({"origin": KeyError}, "missing field `origin`"),
        ({"target": KeyError}, "missing field `target`"),
        ({"msg": "a5636f6c6f72"}, "invalid type for `msg`: string 'a5636f6c6f72', expected a byte"),
        ({"msg": [1, 2]}, "invalid type for `msg`: sequence of length 2"),
        ({"msg": None}, "invalid type for `msg`: nil"),
        ({"operation": 7}, "invalid type for `operation`: integer `7`, expected a string"),
        ({"id": b"x"}, "invalid type for `id`: byte array of length 1, expected a string"),
        ({"encoded_claims": None}, "invalid type for `encoded_claims`: nil"),
        ({"host_id": True}, "invalid type for `host_id`: boolean `true`"),
        ({"content_length": -1}, "invalid value for `content_length`: integer `-1`, expected u64"),
        ({"content_length": True}, "invalid type for `content_length`: boolean `true`"),
        ({"content_length": 1.5}, "invalid type for `content_length`: floating point `1.5`"),
        ({"traceContext": {"a": 1}}, "invalid type for `traceContext['a']`: integer `1`"),
        ({"origin": {"public_key": ACTOR}}, "missing field `origin.contract_id`"),
        ({"target": "x"}, "expected struct WasmCloudEntity"),
    ],
)
def test_invocation_type_errors(changes: dict[str, object], text: str) -> None:
    with pytest.raises(WireError) as excinfo:
        Invocation.decode(_envelope(**changes))
    assert text in str(excinfo.value)


@pytest.mark.parametrize("data", [b"", b"\xc0", pack("str"), pack([1] * 10), b"\x81\xa1a"])
def test_invocation_non_envelopes(data: bytes) -> None:
    with pytest.raises(DecodeError):
        Invocation.decode(data)


def test_wire_error_is_a_decode_error() -> None:
    assert issubclass(WireError, DecodeError)


# -------------------------------------------------------------- invocation response ----

RESPONSES = [
    "invocation_response.success.get",
    "invocation_response.success.set_empty",
    "invocation_response.error.unlinked",
    "invocation_response.error.deser",
    "invocation_response.chunked_marker",
]


@pytest.mark.parametrize("name", RESPONSES)
def test_invocation_response_vectors_round_trip(name: str) -> None:
    data = vec_bytes(name)
    resp = InvocationResponse.decode(data)
    assert resp.encode() == data
    decoded = V[name]["decoded"]
    assert resp.invocation_id == decoded["invocation_id"]
    assert resp.error == decoded.get("error")
    assert resp.content_length == decoded["content_length"]


def test_invocation_response_helpers() -> None:
    inv_id = "6f1c2d3e-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    get = bytes.fromhex("82a576616c7565a4626c7565a6657869737473c3")
    assert InvocationResponse.success(inv_id, get).encode() == vec_bytes(
        "invocation_response.success.get"
    )
    assert InvocationResponse.success(inv_id, b"").encode() == vec_bytes(
        "invocation_response.success.set_empty"
    )
    failure = InvocationResponse.failure(inv_id, f"unlinked actor: '{ACTOR}'")
    assert failure.encode() == vec_bytes("invocation_response.error.unlinked")
    assert failure.content_length == 0 and not failure.ok
    assert InvocationResponse(b"abc", "x").content_length == 3
    empty_error = InvocationResponse.failure("x", "")
    assert not empty_error.ok and "error" in unpack(empty_error.encode())


def test_deser_error_reply_prefix() -> None:
    resp = InvocationResponse.decode(vec_bytes("invocation_response.error.deser"))
    assert resp.error is not None and resp.error.startswith("deser error: deserialization: ")
    assert resp.invocation_id == ""


def test_invocation_response_decode_defaults_and_errors() -> None:
    resp = InvocationResponse.decode(pack({"msg": b"ab"}))
    assert (resp.invocation_id, resp.error, resp.content_length) == ("", None, 2)
    with pytest.raises(WireError, match="`msg`"):
        InvocationResponse.decode(pack({"msg": "ab"}))
    with pytest.raises(WireError, match="`error`"):
        InvocationResponse.decode(pack({"msg": b"", "error": 1}))


# --------------------------------------------------------------------------- links ----


def test_linkdef_host_style_decodes_ignoring_id() -> None:
    ld = LinkDefinition.decode_msgpack(vec_bytes("linkdef.put.host_style"))
    assert ld.actor_id == ACTOR
    assert ld.provider_id == PROVIDER
    assert ld.link_name == "default"
    assert ld.contract_id == "wasmcloud:keyvalue"
    assert ld.values == {
        "NATS_URL": "nats://127.0.0.1:4222",
        "STATE_REPL_SUBJECT": "kv.repl.events",
    }


def test_linkdef_rmp_style_re_encodes() -> None:
    data = vec_bytes("linkdef.rmp_style")
    ld = LinkDefinition.decode_msgpack(data)
    assert ld.encode_msgpack() == data
    assert ld == LinkDefinition.decode_msgpack(vec_bytes("linkdef.put.host_style"))


def test_linkdef_json() -> None:
    text = V["linkdef.put.test_mode_json"]["text"]
    ld = LinkDefinition.decode_json(text)
    assert ld.encode_json() == text.encode()
    assert LinkDefinition.decode_json(text.encode()) == ld


def test_linkdef_legacy_deleted_flag_and_positional_form() -> None:
    ld = LinkDefinition.from_obj({"values": {}, "deleted": False, "id": "uuid", "actor_id": "M"})
    assert ld == LinkDefinition(actor_id="M")
    assert LinkDefinition.from_obj(["M", "V", "l", "c", {"k": "v"}]).values == {"k": "v"}


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"actor_id": "M"}, "missing field `values`"),
        ({"values": {"k": 1}}, "`values['k']`: integer `1`"),
        ({"values": {1: "v"}}, "`values key`: integer `1`"),
        ({"values": [], "actor_id": "M"}, "`values`: sequence"),
        ({"values": {}, "actor_id": 3}, "`actor_id`"),
    ],
)
def test_linkdef_rejects(obj: object, fragment: str) -> None:
    with pytest.raises(WireError) as excinfo:
        LinkDefinition.from_obj(obj)
    assert fragment in str(excinfo.value)


def test_linkdef_bad_json_and_msgpack() -> None:
    with pytest.raises(WireError, match="invalid JSON"):
        LinkDefinition.decode_json(b"{nope")
    with pytest.raises(DecodeError):
        LinkDefinition.decode_msgpack(b"\xc1")


# -------------------------------------------------------------------------- health ----


def test_health_vectors() -> None:
    assert HealthCheckResponse(True).encode_msgpack() == vec_bytes("health.response.healthy")
    unhealthy = HealthCheckResponse(False, "nats replication connection lost")
    assert unhealthy.encode_msgpack() == vec_bytes("health.response.unhealthy")
    assert (
        HealthCheckResponse(True).encode_json()
        == V["health.response.test_mode_json"]["text"].encode()
    )
    assert HealthCheckResponse(True).encode_json() == b'{"healthy":true}'
    assert (
        unhealthy.encode_json() == b'{"healthy":false,"message":"nats replication connection lost"}'
    )


def test_health_decoders() -> None:
    assert HealthCheckResponse.decode_msgpack(vec_bytes("health.response.unhealthy")) == (
        HealthCheckResponse(False, "nats replication connection lost")
    )
    assert HealthCheckResponse.decode_json(b'{"healthy":true}') == HealthCheckResponse(True)
    with pytest.raises(WireError):
        HealthCheckResponse.decode_json(b'{"healthy":"yes"}')


# ------------------------------------------------------------------------ shutdown ----


def test_shutdown_host_id() -> None:
    body = V["shutdown.request"]["text"].encode()
    assert parse_shutdown_host_id(body) == KEYS["host"]["public_key"]
    assert parse_shutdown_host_id(b'{"host_id":"_TEST_"}') == "_TEST_"
    for junk in (b"", b"{}", b"not json", b"[1]", b'{"host_id":5}', b'{"host_id":null}', b"\xff"):
        assert parse_shutdown_host_id(junk) == ""


# ------------------------------------------------------------------------ subjects ----


def test_subjects() -> None:
    s = Subjects("default", PROVIDER, "default")
    base = f"wasmbus.rpc.default.{PROVIDER}.default"
    assert s.rpc == base == V["invocation.host_style.get"]["nats_subject"]
    assert s.link_put == V["linkdef.put.host_style"]["nats_subject_put"]
    assert s.link_del == V["linkdef.put.host_style"]["nats_subject_del"]
    assert s.health == V["health.request.host"]["nats_subject"]
    assert s.shutdown == V["shutdown.request"]["nats_subject"]


# ------------------------------------------------------------------------ HostData ----


def test_hostdata_otp_line() -> None:
    hd = HostData.from_stdin_line(V["hostdata.otp_0_63"]["stdin_line"])
    assert hd.host_id == KEYS["host"]["public_key"]
    assert hd.lattice_rpc_prefix == "default"
    assert hd.provider_key == PROVIDER
    assert hd.invocation_seed == KEYS["cluster"]["seed"]
    assert hd.cluster_issuers == [CLUSTER]
    assert hd.config_json is None  # "" means "no config"
    assert hd.default_rpc_timeout_ms == 2000
    assert hd.log_level == "info"
    assert hd.structured_logging is False
    assert hd.instance_id == "3b0e2f4c-6a8d-4d3e-9f1a-2b5c7d9e0f11"
    assert len(hd.link_definitions) == 1 and hd.link_definitions[0].actor_id == ACTOR
    assert not hd.is_test_mode
    assert hd.nats_url == "nats://127.0.0.1:4222"
    assert hd.credentials() is None


def test_hostdata_harness_line_crlf_unpadded() -> None:
    line = V["hostdata.test_harness"]["stdin_line"]
    assert line.endswith("\r\n") and not line.rstrip().endswith("=")
    hd = HostData.from_stdin_line(line.encode())
    assert hd.is_test_mode
    assert hd.lattice_rpc_prefix == "TEST"
    assert hd.cluster_issuers == [KEYS["test_harness_host"]["public_key"]]
    assert hd.default_rpc_timeout_ms is None and hd.log_level is None
    assert hd.link_definitions[0].values == {"config_b64": "e30"}


def test_hostdata_json_matches_stdin_line() -> None:
    for name in ("hostdata.otp_0_63", "hostdata.test_harness"):
        v = V[name]
        assert HostData.from_json(v["json_text"]) == HostData.from_stdin_line(v["stdin_line"])


@pytest.mark.parametrize("padded", [True, False])
def test_hostdata_to_stdin_line_round_trips(padded: bool) -> None:
    hd = HostData.from_stdin_line(V["hostdata.otp_0_63"]["stdin_line"])
    hd.config_json = '{"url":"x"}'
    line = hd.to_stdin_line(padded=padded)
    assert line.endswith(b"\n" if padded else b"\r\n")
    assert HostData.from_stdin_line(line) == hd


@pytest.mark.parametrize("line", ["", "   ", "\r\n", b"\n"])
def test_hostdata_empty_stdin(line: str | bytes) -> None:
    with pytest.raises(HostDataError) as excinfo:
        HostData.from_stdin_line(line)
    assert str(excinfo.value) == "stdin is empty - expecting host data configuration"


def _line(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


@pytest.mark.parametrize("key", ["env_values", "link_definitions", "cluster_issuers"])
def test_hostdata_required_keys(key: str) -> None:
    obj = {"env_values": {}, "link_definitions": [], "cluster_issuers": []}
    del obj[key]
    with pytest.raises(HostDataError, match=f"missing field `{key}`"):
        HostData.from_stdin_line(_line(obj))


def test_hostdata_minimal_and_unknown_keys() -> None:
    obj = {"env_values": {}, "link_definitions": [], "cluster_issuers": [], "js_domain": None}
    obj["lattice_rpc_tls"] = 1
    obj["enable_structured_logging"] = True
    hd = HostData.from_json(json.dumps(obj))
    assert hd == HostData()
    assert hd.structured_logging is False


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"host_id": None}, "`host_id`"),
        ({"cluster_issuers": "C"}, "`cluster_issuers`"),
        ({"link_definitions": [{"actor_id": "M"}]}, "missing field `values`"),
        ({"link_definitions": {}}, "`link_definitions`"),
        ({"env_values": {"a": 1}}, "`env_values['a']`"),
        ({"structured_logging": "yes"}, "`structured_logging`"),
        ({"default_rpc_timeout_ms": -1}, "`default_rpc_timeout_ms`"),
        ({"config_json": 3}, "`config_json`"),
    ],
)
def test_hostdata_type_errors(changes: dict[str, object], fragment: str) -> None:
    obj = {"env_values": {}, "link_definitions": [], "cluster_issuers": [], **changes}
    with pytest.raises(HostDataError) as excinfo:
        HostData.from_json(json.dumps(obj))
    assert fragment in str(excinfo.value)


@pytest.mark.parametrize("line", ["!!!!", "a", b"\xff\xfe", "é", base64.b64encode(b"[1]").decode()])
def test_hostdata_bad_lines(line: str | bytes) -> None:
    with pytest.raises(HostDataError):
        HostData.from_stdin_line(line)


def test_hostdata_nats_url() -> None:
    assert HostData().nats_url == "nats://127.0.0.1:4222"
    assert HostData(lattice_rpc_url="10.0.0.1:4333").nats_url == "nats://10.0.0.1:4333"
    assert HostData(lattice_rpc_url=" tls://nats:4222 ").nats_url == "tls://nats:4222"


def test_hostdata_credentials() -> None:
    assert HostData(lattice_rpc_user_jwt=" ", lattice_rpc_user_seed="").credentials() is None
    both = HostData(lattice_rpc_user_jwt="eyJ", lattice_rpc_user_seed=" SUABC ")
    assert both.credentials() == ("eyJ", "SUABC")
    with pytest.raises(HostDataError):
        HostData(lattice_rpc_user_jwt="eyJ").credentials()
    with pytest.raises(HostDataError):
        HostData(lattice_rpc_user_seed="SUABC").credentials()


def test_hostdata_repr_hides_seeds() -> None:
    hd = HostData.from_stdin_line(V["hostdata.otp_0_63"]["stdin_line"])
    hd.lattice_rpc_user_seed = "SUSECRET"
    text = repr(hd)
    assert KEYS["cluster"]["seed"] not in text and "SUSECRET" not in text
    assert PROVIDER in text
