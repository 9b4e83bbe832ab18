"""MAX_MEMORY and the per-call bounds, against a real provider process over a real nats-server.

* With ``MAX_MEMORY=2mb`` in the link values, 100 KB Sets fill the store; the next Set answers
  Redis' exact OOM text and changes nothing; Get and Del still work, and after Dels a Set works
  again. Health stays healthy and says memory is full.
* The SetUnion attack (one 2,000-member set named 150,000 times, ~600 KB: one NATS message)
  answers quickly, and a health request sent while the provider handles it answers within
  100 ms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from contract.client import KeyValueError
from contract.keyvalue import OPERATIONS, GetResponse, SetAddRequest
from contract.wire import InvocationResponse
from wasmbus_testkit import KeyValueHost as FakeHost

HostFactory = Callable[..., Awaitable[FakeHost]]

OOM = "OOM command not allowed when used memory > 'maxmemory'."
VALUE_100KB = "v" * 100_000


async def refused(call: Awaitable[object]) -> str:
    with pytest.raises(KeyValueError) as info:
        await call
    return str(info.value)


async def test_max_memory_from_link_values_refuses_growth_but_not_reads_or_deletes(
    fake_host_factory: HostFactory,
) -> None:
    host = await fake_host_factory(link_values={"MAX_MEMORY": "2mb"})
    kv = host.kv
    await kv.set("keep", "old value")
    stored = 0
    error = None
    for i in range(40):  # 2 MiB / 100 KB: the 21st or so is over the limit
        try:
            await kv.set(f"big:{i}", VALUE_100KB)
        except KeyValueError as refusal:
            error = str(refusal)
            break
        stored += 1
    assert error == OOM
    assert 18 <= stored <= 22, stored
    assert await refused(kv.set("keep", "new value")) == OOM
    assert await kv.get("keep") == GetResponse("old value", True)  # unchanged
    assert await refused(kv.list_add("list", "x")) == OOM
    assert await refused(kv.set_add("set", "x")) == OOM
    assert await refused(kv.increment("counter", 1)) == OOM
    assert await kv.get(f"big:{stored}") == GetResponse("", False)  # the refused Set wrote nothing
    assert (await kv.get("big:0")).value == VALUE_100KB
    health = await host.health()
    assert health.healthy is True
    assert "memory full" in (health.message or "")
    assert await kv.delete("big:0") is True
    assert await kv.delete("big:1") is True
    await kv.set("keep", "new value")
    assert await kv.get("keep") == GetResponse("new value", True)


async def test_set_union_attack_answers_quickly_and_health_stays_responsive(
    fake_host_factory: HostFactory,
) -> None:
    host = await fake_host_factory(rpc_timeout=10.0)
    kv = host.kv
    op = OPERATIONS["SetAdd"]
    for start in range(0, 2000, 200):  # a 2,000-member set, 200 calls in flight at a time
        replies = await asyncio.gather(
            *(
                kv.invoke(op.wire_name, op.encode_input(SetAddRequest("atk", f"member-{i}")))
                for i in range(start, start + 200)
            )
        )
        assert all(reply.error is None for reply in replies)
    union = OPERATIONS["SetUnion"]
    msg = union.encode_input(["atk"] * 150_000)
    assert len(msg) < 900 * 1024  # one NATS message, no chunking
    inv = kv.build_invocation(union.wire_name, msg)
    data = inv.encode()
    await host.health()  # warm

    async def timed_health() -> float:
        await asyncio.sleep(0.005)  # let the attack go out first
        started = time.perf_counter()
        await host.health(timeout=2.0)
        return time.perf_counter() - started

    started = time.perf_counter()
    attack, health_seconds = await asyncio.gather(
        host.nc.request(kv.subject, data, timeout=10.0), timed_health()
    )
    attack_seconds = time.perf_counter() - started

    response = InvocationResponse.decode(attack.data)
    assert response.error is None
    assert sorted(union.decode_output(response.msg)) == sorted(f"member-{i}" for i in range(2000))
    assert attack_seconds < 1.0, attack_seconds
    assert health_seconds < 0.1, health_seconds


async def test_too_many_distinct_set_names_are_refused_with_an_err_text(
    fake_host: FakeHost,
) -> None:
    names = [f"n{i}" for i in range(10_001)]
    text = await refused(fake_host.kv.set_union(names))
    assert text.startswith("ERR too many distinct set names")
    assert await fake_host.kv.set_union([f"n{i}" for i in range(10_000)]) == []
