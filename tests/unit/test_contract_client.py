"""contract.client: the client signs host-layout invocations and decodes replies.

A fake connection plays a tiny provider in-process (decode → validate → dispatch), so no NATS
server is needed.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from contract.claims import ClaimsError, validate_invocation
from contract.client import KeyValueClient, KeyValueError
from contract.codec import unpack
from contract.keyvalue import GetResponse, UnknownOperationError, resolve_operation
from contract.nkeys import KeyPair
from contract.wire import Invocation, InvocationResponse

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "vectors.json").read_text())
KEYS = DATA["keys"]
CLUSTER = KeyPair.from_seed(KEYS["cluster"]["seed"])
ACTOR = KEYS["actor"]["public_key"]
PROVIDER = KEYS["provider"]["public_key"]


@dataclass
class _Msg:
    data: bytes


class FakeProvider:
    """Answers requests like a provider would, with canned handler results."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.requests: list[tuple[str, bytes, float]] = []
        self.args: list[Any] = []
        self.override: bytes | None = None

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 2.0) -> _Msg:
        self.requests.append((subject, payload, timeout))
        if self.override is not None:
            return _Msg(self.override)
        inv = Invocation.decode(payload)
        try:
            validate_invocation(inv)
            op = resolve_operation(inv.operation)
            arg = op.decode_input(inv.msg)
        except (ClaimsError, UnknownOperationError, ValueError) as exc:
            return _Msg(InvocationResponse.failure(inv.id, str(exc)).encode())
        self.args.append(arg)
        result = self.results[op.name]
        if isinstance(result, Exception):
            return _Msg(InvocationResponse.failure(inv.id, str(result)).encode())
        return _Msg(InvocationResponse.success(inv.id, op.encode_output(result)).encode())


def _client(nc: FakeProvider, **kwargs: Any) -> KeyValueClient:
    return KeyValueClient(
        nc, lattice_prefix="default", provider_key=PROVIDER, signer=CLUSTER, actor_key=ACTOR,
        **kwargs,
    )  # fmt: skip


async def test_typed_helpers_round_trip() -> None:
    nc = FakeProvider(
        {
            "Get": GetResponse("blue", True),
            "Set": None,
            "Del": True,
            "Contains": False,
            "Increment": -5,
            "ListAdd": 2,
            "ListDel": True,
            "ListClear": False,
            "ListRange": ["a", "b"],
            "SetAdd": 1,
            "SetDel": 0,
            "SetQuery": ["x"],
            "SetUnion": ["x", "y"],
            "SetIntersection": [],
            "SetClear": True,
        }
    )
    kv = _client(nc)
    assert await kv.get("color") == GetResponse("blue", True)
    assert await kv.set("color", "blue", expires=10) is None
    assert await kv.delete("color") is True
    assert await kv.contains("color") is False
    assert await kv.increment("counter", -30) == -5
    assert await kv.list_add("fruit", "apple") == 2
    assert await kv.list_del("fruit", "apple") is True
    assert await kv.list_clear("fruit") is False
    assert await kv.list_range("fruit", 0, -1) == ["a", "b"]
    assert await kv.set_add("team", "bob") == 1
    assert await kv.set_del("team", "bob") == 0
    assert await kv.set_query("team") == ["x"]
    assert await kv.set_union(["a", "b"]) == ["x", "y"]
    assert await kv.set_intersection(("a", "b")) == []
    assert await kv.set_clear("team") is True
    assert len(nc.requests) == 15
    assert nc.args[1].expires == 10
    assert nc.args[4].value == -30


async def test_invocations_are_host_style_and_unique() -> None:
    nc = FakeProvider({"Get": GetResponse()})
    kv = _client(nc, timeout=1.5)
    await kv.get("a")
    await kv.get("a")
    (subject, payload, timeout), (_, payload2, _) = nc.requests
    assert subject == kv.subject == f"wasmbus.rpc.default.{PROVIDER}.default"
    assert timeout == 1.5
    raw = unpack(payload)
    assert list(raw) == [
        "origin", "target", "operation", "msg", "id", "encoded_claims", "host_id", "content_length"
    ]  # fmt: skip
    assert list(raw["target"]) == ["public_key", "contract_id", "link_name"]
    assert raw["target"]["contract_id"] == "wasmcloud:keyvalue"
    assert raw["host_id"] == CLUSTER.public_key
    assert raw["content_length"] == len(raw["msg"])
    assert raw["id"] != unpack(payload2)["id"]


async def test_raw_invoke_returns_errors() -> None:
    nc = FakeProvider({})
    kv = _client(nc)
    resp = await kv.invoke("KeyValue.Nope", b"\xa1a", timeout=0.5)
    assert resp.error == "method not handled KeyValue::Nope"
    assert nc.requests[0][2] == 0.5


async def test_call_raises_provider_errors() -> None:
    nc = FakeProvider({"Increment": RuntimeError("value is not an integer")})
    kv = _client(nc)
    with pytest.raises(KeyValueError, match=r"^value is not an integer$"):
        await kv.increment("color", 1)


async def test_call_rejects_unknown_method_locally() -> None:
    kv = _client(FakeProvider({}))
    with pytest.raises(UnknownOperationError):
        await kv.call("Nope", "x")
    assert not kv._nc.requests  # type: ignore[attr-defined]


async def test_chunked_reply_is_reported() -> None:
    nc = FakeProvider({})
    nc.override = InvocationResponse(b"", "id", None, 1_000_000).encode()
    with pytest.raises(KeyValueError, match="chunked"):
        await _client(nc).get("big")


async def test_test_harness_style_target() -> None:
    nc = FakeProvider({"Get": GetResponse()})
    kv = _client(nc, contract_id="", link_name="other", host_id="NFAKEHOST")
    await kv.get("a")
    inv = Invocation.decode(nc.requests[0][1])
    assert inv.target.url() == f"wasmbus:///other/{PROVIDER}"
    assert inv.host_id == "NFAKEHOST"
    assert nc.requests[0][0].endswith(".other")


def test_repr_has_no_seed() -> None:
    text = repr(_client(FakeProvider({})))
    assert KEYS["cluster"]["seed"] not in text
