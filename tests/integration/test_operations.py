"""The 15 ``wasmcloud:keyvalue`` operations, through real signed invocations (contract §2-§4).

One provider process serves the whole module (tests use disjoint key names), driven by a fake
OTP host over a real nats-server. Besides the recommended Redis-like semantics, this replays
the sequence of the original Redis provider's test (kvredis ``kv_test.rs``): expiring Set,
Contains/Del, Increment 0 → 25 → 20, the apple/banana/peach list and SetAdd returning 1 then 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from contract.client import KeyValueError
from contract.codec import pack, unpack
from contract.keyvalue import (
    OPERATIONS,
    GetResponse,
    IncrementRequest,
    ListAddRequest,
    ListDelRequest,
    ListRangeRequest,
    SetAddRequest,
    SetDelRequest,
    SetRequest,
)
from contract.nkeys import KeyPair
from wasmbus_testkit import KeyValueHost as FakeHost

pytestmark = pytest.mark.asyncio(loop_scope="module")

WRONGTYPE = "WRONGTYPE Operation against a key holding the wrong kind of value"
NOT_INTEGER = "ERR value is not an integer or out of range"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_host(module_fake_host_factory: Callable[..., Awaitable[FakeHost]]) -> FakeHost:
    return await module_fake_host_factory()


@pytest.fixture
def host(shared_host: FakeHost, attach_log: Any) -> FakeHost:
    assert shared_host.process is not None
    attach_log("provider stderr", shared_host.process.stderr_path)
    return shared_host


@pytest.fixture
def kv(host: FakeHost) -> Any:
    return host.kv


async def refused(call: Awaitable[Any]) -> str:
    """Await a client call that must fail; return the provider's error text."""
    with pytest.raises(KeyValueError) as info:
        await call
    return str(info.value)


# -- every operation answers with its contract output type -----------------------------------

SAMPLE_CALLS: dict[str, tuple[Any, Callable[[Any], bool]]] = {
    "Get": ("sample:get", lambda out: out == GetResponse("", False)),
    "Set": (SetRequest("sample:set", "v", 0), lambda out: out is None),
    "Del": ("sample:del", lambda out: out is False),
    "Contains": ("sample:contains", lambda out: out is False),
    "Increment": (IncrementRequest("sample:incr", 7), lambda out: out == 7),
    "ListAdd": (ListAddRequest("sample:list", "x"), lambda out: out == 1),
    "ListDel": (ListDelRequest("sample:nolist", "x"), lambda out: out is False),
    "ListClear": ("sample:nolist", lambda out: out is False),
    "ListRange": (ListRangeRequest("sample:nolist", 0, -1), lambda out: out == []),
    "SetAdd": (SetAddRequest("sample:set-a", "x"), lambda out: out == 1),
    "SetDel": (SetDelRequest("sample:noset", "x"), lambda out: out == 0),
    "SetQuery": ("sample:noset", lambda out: out == []),
    "SetUnion": (["sample:noset", "sample:noset2"], lambda out: out == []),
    "SetIntersection": (["sample:noset", "sample:noset2"], lambda out: out == []),
    "SetClear": ("sample:noset", lambda out: out is False),
}


async def test_sample_calls_cover_all_fifteen_operations() -> None:
    """The parametrized smoke test below really exercises every operation of the contract."""
    assert set(SAMPLE_CALLS) == set(OPERATIONS)
    assert len(OPERATIONS) == 15


@pytest.mark.parametrize("name", sorted(OPERATIONS))
async def test_operation_answers_with_its_output_type(host: FakeHost, name: str) -> None:
    """Each operation succeeds on fresh keys and its reply decodes as the contract's output."""
    arg, expected = SAMPLE_CALLS[name]
    op = OPERATIONS[name]
    response = await host.kv.invoke(op.wire_name, op.encode_input(arg))
    assert response.error is None
    assert response.content_length == len(response.msg)
    assert expected(op.decode_output(response.msg))


# -- Get / Set ------------------------------------------------------------------------------


async def test_get_missing_key_reports_not_exists(kv: Any) -> None:
    """A missing key reads as ``{value: "", exists: false}``."""
    assert await kv.get("get:missing") == GetResponse("", False)


async def test_set_then_get_returns_the_value(kv: Any) -> None:
    """Set stores the string; Get returns it with exists=true; a second Set replaces it."""
    await kv.set("get:color", "blue")
    assert await kv.get("get:color") == GetResponse("blue", True)
    await kv.set("get:color", "green")
    assert await kv.get("get:color") == GetResponse("green", True)


async def test_set_reply_is_an_empty_msg_without_error_key(host: FakeHost) -> None:
    """Set's raw InvocationResponse: msg is b"" (not nil), content_length 0, no error key."""
    inv = host.invocation("KeyValue.Set", pack({"key": "raw:set", "value": "v", "expires": 0}))
    raw = await host.raw_request(inv.encode())
    reply = unpack(raw)
    assert reply == {"msg": b"", "invocation_id": inv.id, "content_length": 0}
    assert "error" not in reply


async def test_get_reply_bytes_match_the_contract_encoding(host: FakeHost) -> None:
    """Get's msg is exactly map{value, exists} in that order (contract §2 example)."""
    await host.kv.set("raw:color", "blue")
    inv = host.invocation("KeyValue.Get", pack("raw:color"))
    response = await host.send(inv)
    assert response.invocation_id == inv.id
    assert response.msg == bytes.fromhex("82a576616c7565a4626c7565a6657869737473c3")


async def test_set_unicode_and_empty_values_round_trip(kv: Any) -> None:
    """Values are arbitrary strings: empty and non-ASCII ones come back unchanged."""
    await kv.set("get:empty", "")
    await kv.set("get:ünïcode ☃", "välue ☃")
    assert await kv.get("get:empty") == GetResponse("", True)
    assert await kv.get("get:ünïcode ☃") == GetResponse("välue ☃", True)


async def test_set_with_expiry_is_visible_then_gone(kv: Any) -> None:
    """kvredis sequence: Set with expires=1 is readable at once and gone after ~1.1 s.

    In the same second: Set with expires=0 drops an earlier TTL, and Increment keeps the TTL
    of the value it updates.
    """
    await kv.set("ttl:short", "soon-gone", expires=1)
    await kv.set("ttl:cleared", "first", expires=1)
    await kv.set("ttl:cleared", "stays", expires=0)
    await kv.set("ttl:counter", "5", expires=1)
    assert await kv.increment("ttl:counter", 1) == 6
    assert await kv.get("ttl:short") == GetResponse("soon-gone", True)
    assert await kv.contains("ttl:short") is True

    await asyncio.sleep(1.1)  # expiry is wall-clock time: no event to wait for

    assert await kv.get("ttl:short") == GetResponse("", False)
    assert await kv.contains("ttl:short") is False
    assert await kv.get("ttl:cleared") == GetResponse("stays", True)
    assert await kv.get("ttl:counter") == GetResponse("", False)


async def test_set_replaces_a_list_or_set(kv: Any) -> None:
    """Set overwrites a key of any type (the namespace is shared, as in Redis)."""
    await kv.list_add("replace:list", "a")
    await kv.set_add("replace:set", "a")
    await kv.set("replace:list", "now a string")
    await kv.set("replace:set", "me too")
    assert await kv.get("replace:list") == GetResponse("now a string", True)
    assert await kv.get("replace:set") == GetResponse("me too", True)


# -- Contains / Del ------------------------------------------------------------------------


async def test_contains_and_del(kv: Any) -> None:
    """kvredis sequence: Contains false → Set → true → Del true → Del false → Contains false."""
    assert await kv.contains("del:key") is False
    await kv.set("del:key", "value")
    assert await kv.contains("del:key") is True
    assert await kv.delete("del:key") is True
    assert await kv.delete("del:key") is False
    assert await kv.contains("del:key") is False
    assert await kv.get("del:key") == GetResponse("", False)


async def test_del_and_contains_work_on_lists_and_sets(kv: Any) -> None:
    """Contains sees every type; Del deletes every type."""
    await kv.list_add("del:list", "a")
    await kv.set_add("del:set", "a")
    assert await kv.contains("del:list") is True
    assert await kv.contains("del:set") is True
    assert await kv.delete("del:list") is True
    assert await kv.delete("del:set") is True
    assert await kv.contains("del:list") is False
    assert await kv.contains("del:set") is False


# -- Increment -----------------------------------------------------------------------------


async def test_increment_sequence_from_the_redis_provider(kv: Any) -> None:
    """kvredis sequence: Set "0", +25 → Get "25", -5 → Get "20" (stored as decimal strings)."""
    await kv.set("incr:counter", "0")
    assert await kv.increment("incr:counter", 25) == 25
    assert await kv.get("incr:counter") == GetResponse("25", True)
    assert await kv.increment("incr:counter", -5) == 20
    assert await kv.get("incr:counter") == GetResponse("20", True)


async def test_increment_missing_key_counts_as_zero(kv: Any) -> None:
    """A missing key starts at 0; the result is readable with Get."""
    assert await kv.increment("incr:fresh", -3) == -3
    assert await kv.get("incr:fresh") == GetResponse("-3", True)


@pytest.mark.parametrize("stored", ["+1", "00", "-0", "007", "12345678901234567890"])
async def test_increment_parses_integers_as_redis_does(kv: Any, stored: str) -> None:
    """Redis' INCRBY refuses every non-canonical spelling; the value is never rewritten."""
    key = f"incr:redis:{stored}"
    await kv.set(key, stored)
    assert await refused(kv.increment(key, 1)) == NOT_INTEGER
    assert await kv.get(key) == GetResponse(stored, True)


async def test_increment_on_non_integer_is_refused_and_changes_nothing(kv: Any) -> None:
    """A non-integer string gives Redis' error text; the value stays as it was."""
    await kv.set("incr:text", "abc")
    assert await refused(kv.increment("incr:text", 1)) == NOT_INTEGER
    await kv.set("incr:spaced", " 1")
    assert await refused(kv.increment("incr:spaced", 1)) == NOT_INTEGER
    assert await kv.get("incr:text") == GetResponse("abc", True)


async def test_increment_beyond_i32_is_refused(kv: Any) -> None:
    """A result outside i32 is an error (the actor could not decode it); nothing changes."""
    await kv.set("incr:max", str(2**31 - 1))
    error = await refused(kv.increment("incr:max", 1))
    assert error.startswith("ERR ")
    assert await kv.get("incr:max") == GetResponse(str(2**31 - 1), True)


async def test_increment_reaches_i32_min_but_not_beyond(kv: Any) -> None:
    """The full i32 range is usable; one step past it is refused and changes nothing."""
    assert await kv.increment("incr:min", -(2**31)) == -(2**31)
    assert (await refused(kv.increment("incr:min", -1))).startswith("ERR ")
    assert await kv.get("incr:min") == GetResponse(str(-(2**31)), True)


async def test_keys_longer_than_16_kib_are_refused(kv: Any) -> None:
    """A key of 16 KiB (UTF-8 bytes) is accepted; one byte more is refused, for any type."""
    await kv.set("k" * 16384, "fits")
    assert await kv.get("k" * 16384) == GetResponse("fits", True)
    too_long = "k" * 16385
    assert await refused(kv.set(too_long, "v")) == "ERR key is longer than 16384 bytes"
    assert await refused(kv.list_add("ü" * 8193, "v")) == "ERR key is longer than 16384 bytes"


# -- lists ---------------------------------------------------------------------------------


async def test_list_of_fruit_from_the_redis_provider(kv: Any) -> None:
    """kvredis sequence: ListAdd returns the new length; ListRange 0..100 returns everything."""
    for length, fruit in enumerate(["apple", "banana", "peach"], start=1):
        assert await kv.list_add("list:fruit", fruit) == length
    assert await kv.list_range("list:fruit", 0, 100) == ["apple", "banana", "peach"]


@pytest.mark.parametrize(
    ("start", "stop", "expected"),
    [
        (0, -1, ["apple", "banana", "peach"]),
        (-2, -1, ["banana", "peach"]),
        (-100, 0, ["apple"]),
        (1, 1, ["banana"]),
        (-1, -1, ["peach"]),
        (2, 1, []),
        (3, 10, []),
        (0, -4, []),
        (-(2**31), 2**31 - 1, ["apple", "banana", "peach"]),
        (2**31 - 1, -(2**31), []),
    ],
)
async def test_list_range_indices_are_inclusive_and_may_be_negative(
    kv: Any, start: int, stop: int, expected: list[str]
) -> None:
    """LRANGE semantics: inclusive bounds, negative = from the end, clamped to the list."""
    if not await kv.contains("list:range"):
        for fruit in ["apple", "banana", "peach"]:
            await kv.list_add("list:range", fruit)
    assert await kv.list_range("list:range", start, stop) == expected


async def test_list_range_of_missing_list_is_empty(kv: Any) -> None:
    assert await kv.list_range("list:missing", 0, -1) == []


async def test_list_del_removes_the_first_occurrence(kv: Any) -> None:
    """ListDel removes one item from the head; a list that empties disappears."""
    for item in ["a", "b", "a"]:
        await kv.list_add("list:del", item)
    assert await kv.list_del("list:del", "a") is True
    assert await kv.list_range("list:del", 0, -1) == ["b", "a"]
    assert await kv.list_del("list:del", "zzz") is False
    assert await kv.list_del("list:nothing", "a") is False
    assert await kv.list_del("list:del", "b") is True
    assert await kv.list_del("list:del", "a") is True
    assert await kv.contains("list:del") is False


async def test_list_clear_deletes_the_list(kv: Any) -> None:
    """ListClear is true when the list existed, then false; the key is gone."""
    await kv.list_add("list:clear", "x")
    assert await kv.list_clear("list:clear") is True
    assert await kv.list_clear("list:clear") is False
    assert await kv.contains("list:clear") is False
    assert await kv.list_range("list:clear", 0, -1) == []


# -- sets ----------------------------------------------------------------------------------


async def test_set_add_returns_one_then_zero(kv: Any) -> None:
    """kvredis sequence: SetAdd of a new member → 1, of the same member again → 0."""
    assert await kv.set_add("set:add", "alice") == 1
    assert await kv.set_add("set:add", "alice") == 0
    assert await kv.set_add("set:add", "bob") == 1
    assert sorted(await kv.set_query("set:add")) == ["alice", "bob"]


async def test_set_del_and_query(kv: Any) -> None:
    """SetDel → 1 then 0; a set that empties disappears; SetQuery of a missing set is []."""
    await kv.set_add("set:del", "x")
    await kv.set_add("set:del", "y")
    assert await kv.set_del("set:del", "x") == 1
    assert await kv.set_del("set:del", "x") == 0
    assert await kv.set_del("set:missing", "x") == 0
    assert await kv.set_query("set:del") == ["y"]
    assert await kv.set_del("set:del", "y") == 1
    assert await kv.contains("set:del") is False
    assert await kv.set_query("set:del") == []


async def test_set_union_and_intersection(kv: Any) -> None:
    """Union/intersection of named sets; a missing set adds nothing to a union and empties an
    intersection; an empty name list gives []."""
    for member in ["a", "b"]:
        await kv.set_add("set:one", member)
    for member in ["b", "c"]:
        await kv.set_add("set:two", member)
    assert sorted(await kv.set_union(["set:one", "set:two"])) == ["a", "b", "c"]
    assert await kv.set_intersection(["set:one", "set:two"]) == ["b"]
    assert sorted(await kv.set_union(["set:one", "set:absent"])) == ["a", "b"]
    assert await kv.set_intersection(["set:one", "set:absent"]) == []
    assert await kv.set_union([]) == []
    assert await kv.set_intersection([]) == []


async def test_set_clear_deletes_the_set(kv: Any) -> None:
    await kv.set_add("set:clear", "x")
    assert await kv.set_clear("set:clear") is True
    assert await kv.set_clear("set:clear") is False
    assert await kv.contains("set:clear") is False


# -- WRONGTYPE -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "make_arg"),
    [
        ("Get", lambda k: k["list"]),
        ("Increment", lambda k: IncrementRequest(k["set"], 1)),
        ("ListAdd", lambda k: ListAddRequest(k["string"], "x")),
        ("ListDel", lambda k: ListDelRequest(k["set"], "x")),
        ("ListRange", lambda k: ListRangeRequest(k["set"], 0, -1)),
        ("SetAdd", lambda k: SetAddRequest(k["list"], "x")),
        ("SetDel", lambda k: SetDelRequest(k["string"], "x")),
        ("SetQuery", lambda k: k["string"]),
        ("SetUnion", lambda k: [k["set"], k["list"]]),
        ("SetIntersection", lambda k: [k["set"], k["string"]]),
    ],
)
async def test_wrong_type_is_refused_and_changes_nothing(
    kv: Any, method: str, make_arg: Callable[[dict[str, str]], Any]
) -> None:
    """Operating on a key of another type → Redis' WRONGTYPE text; every key is unchanged."""
    keys = {kind: f"wt:{method}:{kind}" for kind in ("string", "list", "set")}
    await kv.set(keys["string"], "plain")
    await kv.list_add(keys["list"], "item")
    await kv.set_add(keys["set"], "member")

    assert await refused(kv.call(method, make_arg(keys))) == WRONGTYPE

    assert await kv.get(keys["string"]) == GetResponse("plain", True)
    assert await kv.list_range(keys["list"], 0, -1) == ["item"]
    assert await kv.set_query(keys["set"]) == ["member"]


async def test_store_is_shared_by_all_linked_actors(host: FakeHost) -> None:
    """One store per provider process, shared by every linked actor (contract §4)."""
    await host.kv.set("shared:key", "from actor one")
    second = KeyPair.generate("module")
    await host.link(second)
    assert await host.client_for(second).get("shared:key") == GetResponse("from actor one", True)
