"""Malformed and hostile RPC input (protocol spec §6 step 1 and 5, contract spec §3).

Anyone who can publish on the lattice can send the provider bytes, so every request with a reply
subject must get a decodable InvocationResponse, whatever it contained, and the process must
keep serving. The deterministic tests pin the SDK's error texts; the hypothesis tests throw
random bytes, random msgpack and mutated valid envelopes at one provider and then check it is
still alive, healthy and answering legitimate calls.

The tests here are synchronous: hypothesis' ``@given`` does not mix with pytest-asyncio's
fixtures, so the FakeHost lives on a :class:`ThreadLoop` shared by the whole module and each
test blocks on its coroutines with ``driven.run(...)``.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from contract.codec import DecodeError, pack, unpack
from contract.keyvalue import GetResponse
from contract.nkeys import KeyPair
from contract.wire import Invocation, InvocationResponse
from tests.harness import strategies
from wasmbus_testkit import KeyValueHost as FakeHost
from wasmbus_testkit import NatsServer, ThreadLoop

T = TypeVar("T")

DESER_PREFIX = "deser error: deserialization:"

FUZZ_SETTINGS = settings(
    deadline=None,  # each example is a network round trip: timing varies with machine load
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass
class Driven:
    """A started FakeHost on a background event loop."""

    loop: ThreadLoop
    host: FakeHost

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run(coro)

    def invoke(self, data: bytes) -> InvocationResponse:
        return self.run(self.host.raw_invoke(data))

    def send(self, inv: Invocation) -> InvocationResponse:
        return self.run(self.host.send(inv))

    def assert_still_serving(self) -> None:
        """Process alive, health answered and healthy, a legit Set/Get round trip works."""
        process = self.host.process
        assert process is not None and process.is_running(), process and process.stderr_text()
        assert self.run(self.host.health()).healthy
        kv = self.host.kv
        self.run(kv.set("bad:alive", "yes"))
        assert self.run(kv.get("bad:alive")) == GetResponse("yes", True)


@pytest.fixture(scope="module")
def driven(module_nats_server: NatsServer, module_provider_factory: Any) -> Iterator[Driven]:
    with ThreadLoop() as loop:
        host = FakeHost(module_nats_server, module_provider_factory)
        loop.run(host.start())
        try:
            yield Driven(loop, host)
        finally:
            loop.run(host.stop())


@pytest.fixture
def host_logs(driven: Driven, attach_log: Any) -> Driven:
    assert driven.host.process is not None
    attach_log("provider stderr", driven.host.process.stderr_path)
    return driven


def assert_deser_error(response: InvocationResponse) -> None:
    assert response.invocation_id == ""
    assert response.error is not None and response.error.startswith(DESER_PREFIX), response
    assert response.msg == b""
    assert response.content_length == 0


# -- undecodable envelopes (spec §6 step 1) --------------------------------------------------

ACTOR = {"public_key": "MACTOR", "contract_id": "", "link_name": ""}
TARGET = {"public_key": "VPROVIDER", "contract_id": "wasmcloud:keyvalue", "link_name": "default"}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        pack(42),
        pack([]),
        pack({"target": TARGET, "operation": "KeyValue.Get"}),
        pack({"origin": {"public_key": "MACTOR"}, "target": TARGET}),
        pack({"origin": ACTOR, "target": TARGET, "msg": "a str, not bin"}),
        pack({"origin": ACTOR, "target": TARGET, "operation": 7}),
        pack({"origin": ACTOR, "target": TARGET, "content_length": -1}),
        pack({"origin": ACTOR, "target": TARGET, "msg": b""})[:-3],
    ],
    ids=[
        "empty",
        "reserved-byte",
        "text",
        "integer",
        "empty-array",
        "no-origin",
        "entity-without-contract_id",
        "msg-as-str",
        "operation-as-int",
        "negative-content_length",
        "truncated",
    ],
)
def test_undecodable_envelope_gets_deser_error_with_empty_id(
    host_logs: Driven, payload: bytes
) -> None:
    """Reply ``{msg: b"", invocation_id: "", error: "deser error: deserialization: …"}``."""
    assert_deser_error(host_logs.invoke(payload))


def test_deser_error_names_the_missing_field(host_logs: Driven) -> None:
    """The decoder's explanation follows the prefix (serde's wording)."""
    response = host_logs.invoke(pack({"target": TARGET}))
    assert response.error == "deser error: deserialization: missing field `origin`"


# -- unknown operations (contract §3) --------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "error"),
    [
        ("KeyValue.Nope", "method not handled KeyValue::Nope"),
        ("KeyValue.get", "method not handled KeyValue::get"),
        ("Other.Get", "method not handled Other.Get - unknown method"),
        ("keyvalue.Get", "method not handled keyvalue.Get - unknown method"),
        ("Get", "method not handled _.Get - unknown method"),
        ("Foo.KeyValue.Get", "method not handled Foo.KeyValue.Get - unknown method"),
    ],
)
def test_unknown_operation_is_refused_with_sdk_text(
    host_logs: Driven, operation: str, error: str
) -> None:
    """Validly signed calls of methods the contract lacks get the generated receiver's text."""
    inv = host_logs.host.invocation(operation, pack("bad:key"))
    response = host_logs.send(inv)
    assert response.error == error
    assert response.invocation_id == inv.id
    assert response.msg == b""


# -- wrong argument types (contract §3) ------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "msg", "type_name"),
    [
        ("KeyValue.Increment", pack({"key": "bad:counter", "value": "x"}), "IncrementRequest"),
        ("KeyValue.Increment", pack({"key": "bad:counter", "value": 2**31}), "IncrementRequest"),
        ("KeyValue.Set", pack({"key": "bad:counter", "value": "9", "expires": -1}), "SetRequest"),
        ("KeyValue.Set", pack({"key": "bad:counter", "value": 9, "expires": 0}), "SetRequest"),
        ("KeyValue.Del", pack(5), "String"),
        ("KeyValue.Del", b"", "String"),
        ("KeyValue.ListAdd", pack({"listName": ["bad:counter"], "value": "x"}), "ListAddRequest"),
        ("KeyValue.SetUnion", pack("bad:counter"), "StringList"),
        ("KeyValue.SetAdd", pack({"setName": "bad:counter", "value": b"x"}), "SetAddRequest"),
    ],
)
def test_wrong_argument_type_is_refused_and_changes_nothing(
    host_logs: Driven, operation: str, msg: bytes, type_name: str
) -> None:
    """``deserialization: '<Type>': deserialization: …``; the targeted key is untouched."""
    kv = host_logs.host.kv
    host_logs.run(kv.set("bad:counter", "1"))
    response = host_logs.send(host_logs.host.invocation(operation, msg))
    assert response.error is not None
    assert response.error.startswith(f"deserialization: '{type_name}': deserialization:")
    assert host_logs.run(kv.get("bad:counter")) == GetResponse("1", True)


# -- hypothesis: random and mutated input ------------------------------------------------------

msgpack_values = strategies.msgpack_values(allow_nan=False)

INVOCATION_KEYS = [
    "origin",
    "target",
    "operation",
    "msg",
    "id",
    "encoded_claims",
    "host_id",
    "content_length",
    "traceContext",
]
ENTITY_KEYS = ["public_key", "link_name", "contract_id"]

entity_like = st.fixed_dictionaries(
    {"public_key": st.text(max_size=8), "contract_id": st.text(max_size=8)},
    optional={"link_name": st.text(max_size=8)},
) | st.dictionaries(st.sampled_from(ENTITY_KEYS), msgpack_values, max_size=3)
invocation_like = st.fixed_dictionaries(
    {"origin": entity_like, "target": entity_like},
    optional={
        "operation": st.sampled_from(["KeyValue.Get", "KeyValue.Set", ""]) | msgpack_values,
        "msg": st.binary(max_size=20) | msgpack_values,
        "id": st.text(max_size=8) | msgpack_values,
        "encoded_claims": st.sampled_from(["", "a.b.c", "..."]) | msgpack_values,
        "host_id": st.text(max_size=8) | msgpack_values,
        "content_length": st.integers(0, 2**64 - 1) | msgpack_values,
        "traceContext": st.dictionaries(st.text(max_size=4), st.text(max_size=4)),
    },
) | st.dictionaries(st.sampled_from(INVOCATION_KEYS), msgpack_values)


def check_reply(data: bytes, response: InvocationResponse, original: Invocation | None) -> None:
    """The properties every reply must have, given what was sent.

    * undecodable envelope → deser error with an empty invocation id;
    * decodable envelope → its id is echoed and the error (if any) is not a deser error;
    * a call only succeeds when everything the claims sign (origin URL, target URL and key,
      operation, argument bytes) is what the trusted issuer signed in ``original``.
    """
    try:
        sent = Invocation.decode(data)
    except DecodeError:
        event("undecodable envelope")
        assert_deser_error(response)
        return
    assert response.invocation_id == sent.id
    if response.error is not None:
        event(f"refused: {response.error[:30]}")
        assert not response.error.startswith("deser error"), response.error
        assert response.msg == b""
        return
    event("accepted")
    assert original is not None, f"unsigned garbage was accepted: {sent!r}"
    signed = (
        original.origin.url(),
        original.target.url(),
        original.target.public_key,
        original.operation,
        original.msg,
    )
    assert (
        sent.origin.url(),
        sent.target.url(),
        sent.target.public_key,
        sent.operation,
        sent.msg,
    ) == signed


def test_random_bytes_always_get_a_decodable_reply(host_logs: Driven) -> None:
    """Arbitrary bytes on the RPC subject: a deser-error reply each time, then still serving."""

    @settings(FUZZ_SETTINGS, max_examples=50)
    @given(st.binary(max_size=300))
    def send(data: bytes) -> None:
        check_reply(data, host_logs.invoke(data), None)

    send()
    host_logs.assert_still_serving()


def test_random_msgpack_always_gets_a_decodable_reply(host_logs: Driven) -> None:
    """Well-formed msgpack of the wrong shape, including invocation-like maps with wrong field
    types: every one is answered (and none succeeds), then the provider is still serving."""

    @settings(FUZZ_SETTINGS, max_examples=50)
    @given(msgpack_values | invocation_like)
    def send(value: Any) -> None:
        data = pack(value)
        check_reply(data, host_logs.invoke(data), None)

    send()
    host_logs.assert_still_serving()


def _swap_entity_fields(obj: dict[str, Any], draw: Any) -> None:
    side = draw(st.sampled_from(["origin", "target"]))
    a, b = draw(st.permutations(ENTITY_KEYS))[:2]
    entity = obj[side]
    entity[a], entity[b] = entity.get(b, ""), entity.get(a, "")


def _edit_text_field(obj: dict[str, Any], draw: Any) -> None:
    """Replace one character of a string field (top level or inside origin/target)."""
    paths = [(k,) for k, v in obj.items() if isinstance(v, str) and v]
    paths += [(side, k) for side in ("origin", "target") for k, v in obj[side].items() if v]
    *parents, name = draw(st.sampled_from(paths))
    holder = obj[parents[0]] if parents else obj
    text = holder[name]
    at = draw(st.integers(0, len(text) - 1))
    holder[name] = text[:at] + draw(st.characters(codec="utf-8")) + text[at + 1 :]


@st.composite
def mutated_envelopes(draw: Any, bases: list[Invocation]) -> tuple[Invocation, bytes]:
    """A valid signed envelope with bits flipped, truncated, or fields swapped/dropped/retyped."""
    original = draw(st.sampled_from(bases))
    data = original.encode()
    kinds = ["flip", "truncate", "swap", "swap-entity", "drop", "retype", "edit-text"]
    kind = draw(st.sampled_from(kinds))
    if kind == "flip":
        mutated = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            mutated[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return original, bytes(mutated)
    if kind == "truncate":
        return original, data[: draw(st.integers(0, len(data) - 1))]
    obj = unpack(data)
    if kind == "swap":
        a, b = draw(st.permutations(list(obj)))[:2]
        obj[a], obj[b] = obj[b], obj[a]
    elif kind == "swap-entity":
        _swap_entity_fields(obj, draw)
    elif kind == "edit-text":
        _edit_text_field(obj, draw)
    elif kind == "drop":
        del obj[draw(st.sampled_from(list(obj)))]
    else:
        obj[draw(st.sampled_from(list(obj)))] = draw(msgpack_values)
    return original, pack(obj)


def test_mutated_valid_envelopes_are_answered_and_never_abused(host_logs: Driven) -> None:
    """Bit flips, truncations and field swaps of validly signed envelopes: every request is
    answered with a decodable reply, and none succeeds unless what it would do is exactly
    what was signed. Afterwards the provider is alive, healthy and serving."""
    host = host_logs.host
    second_actor = KeyPair.generate("module")
    host_logs.run(host.link(second_actor))
    bases = [
        host.invocation("KeyValue.Set", pack({"key": "fuzz:k", "value": "v", "expires": 0})),
        host.invocation("KeyValue.Get", pack("fuzz:k")),
        host.invocation("KeyValue.Increment", pack({"key": "fuzz:n", "value": 1})),
        host.invocation("KeyValue.SetUnion", pack(["fuzz:a", "fuzz:b"]), actor=second_actor),
    ]

    @settings(FUZZ_SETTINGS, max_examples=100)
    @given(mutated_envelopes(bases))
    def send(case: tuple[Invocation, bytes]) -> None:
        original, data = case
        check_reply(data, host_logs.invoke(data), original)

    send()
    host_logs.assert_still_serving()
