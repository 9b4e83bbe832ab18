"""The RPC path in one process: InvocationHandler, SignatureVerifier, kvservice and Metrics.

The integration tests drive the same code through a real nats-server and a provider child
process; here the handler runs on the test's own event loop with a real store, real Ed25519
claims and (where it matters) the real verification worker process, so each branch of the
pipeline — inline verification, batches shipped to the worker, a saturated worker, a dead
worker — can be forced and checked directly, and a failure points at one function.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import pytest

from contract.claims import make_signed_invocation
from contract.keyvalue import OPERATIONS, SetRequest
from contract.nkeys import KeyKind, KeyPair
from contract.wire import HostData, InvocationResponse, LinkDefinition, WasmCloudEntity
from provider.observe.metrics import SAMPLES_PER_OPERATION, Metrics
from provider.rpc import verifier as verifier_module
from provider.rpc.invocations import MAX_BATCH, InvocationHandler
from provider.rpc.kvservice import MAX_KEY_BYTES, execute
from provider.rpc.links import LinkRegistry
from provider.rpc.verifier import SignatureVerifier
from provider.store import KeyValueStore, TooLargeError
from provider.store.codec import new_node_id

CONTRACT = "wasmcloud:keyvalue"


@dataclass
class Rig:
    """One handler wired like the daemon wires it, with replies collected by reply subject."""

    verifier: SignatureVerifier
    cluster: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.CLUSTER))
    provider: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.SERVICE))
    actor: KeyPair = field(default_factory=lambda: KeyPair.generate(KeyKind.MODULE))
    replies: dict[str, InvocationResponse] = field(default_factory=dict)
    changes: list = field(default_factory=list)

    def __post_init__(self) -> None:
        host = HostData(
            host_id=KeyPair.generate(KeyKind.SERVER).public_key,
            lattice_rpc_prefix="default",
            link_name="default",
            provider_key=self.provider.public_key,
            invocation_seed=self.cluster.seed,
            cluster_issuers=[self.cluster.public_key],
        )
        self.links = LinkRegistry()
        self.links.add(
            LinkDefinition(self.actor.public_key, self.provider.public_key, "default", CONTRACT)
        )
        self.store = KeyValueStore(new_node_id())
        self.metrics = Metrics()
        self.handler = InvocationHandler(
            host,
            self.links,
            self.store,
            self.changes.append,
            None,
            self.metrics,
            self.verifier,
            send_reply=lambda reply, body: self.replies.__setitem__(
                reply, InvocationResponse.decode(body)
            ),
        )

    def call(self, operation: str, arg: object, *, signer: KeyPair | None = None) -> bytes:
        op = OPERATIONS[operation]
        inv = make_signed_invocation(
            signer or self.cluster,
            WasmCloudEntity(self.actor.public_key),
            WasmCloudEntity(self.provider.public_key, "default", CONTRACT),
            op.wire_name,
            op.encode_input(arg),
        )
        return inv.encode()

    async def answers(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.replies) < count:
            assert time.monotonic() < deadline, f"{len(self.replies)} of {count} answered"
            await asyncio.sleep(0.005)


@pytest.fixture
async def inline() -> Rig:
    return Rig(SignatureVerifier(use_worker=False))


@pytest.fixture
async def worker():
    verifier = SignatureVerifier(use_worker=True)
    await verifier.start()
    yield Rig(verifier)
    await verifier.stop()


async def test_one_call_is_verified_inline_and_answered(inline: Rig) -> None:
    inline.handler.receive(inline.call("Set", SetRequest("k", "v", 0)), "r1")
    inline.handler.receive(inline.call("Get", "k"), "r2")
    await inline.answers(2)
    assert inline.replies["r1"].error is None
    assert OPERATIONS["Get"].decode_output(inline.replies["r2"].msg).value == "v"
    assert len(inline.changes) == 1  # the Set was handed to replication, the Get not
    assert inline.verifier.verified_inline == 2 and inline.verifier.batches_offloaded == 0
    assert dict(inline.metrics.calls) == {"KeyValue.Set": 1, "KeyValue.Get": 1}


async def test_a_burst_is_shipped_to_the_worker_in_batches(worker: Rig) -> None:
    count = MAX_BATCH * 4
    for i in range(count):
        worker.handler.receive(worker.call("Increment", _incr("n", 1)), f"r{i}")
    await worker.answers(count)
    assert worker.verifier.batches_offloaded >= 1
    totals = sorted(OPERATIONS["Increment"].decode_output(r.msg) for r in worker.replies.values())
    assert totals == list(range(1, count + 1))  # every call verified and applied exactly once


async def test_forged_calls_in_a_worker_batch_are_refused_one_by_one(worker: Rig) -> None:
    stranger = KeyPair.generate(KeyKind.CLUSTER)
    for i in range(MAX_BATCH):
        signer = stranger if i % 2 else None
        worker.handler.receive(worker.call("Increment", _incr("n", 1), signer=signer), f"r{i}")
    await worker.answers(MAX_BATCH)
    refused = [r for r in worker.replies.values() if r.error]
    assert len(refused) == MAX_BATCH // 2
    assert worker.store.get("n") == str(MAX_BATCH // 2)


async def test_a_saturated_worker_lets_the_loop_verify_too(
    worker: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verifier_module, "WORKER_QUEUE_MAX", 1)
    for i in range(MAX_BATCH * 6):
        worker.handler.receive(worker.call("Get", "k"), f"r{i}")
    await worker.answers(MAX_BATCH * 6)
    assert worker.verifier.batches_offloaded >= 1
    assert worker.verifier.verified_inline > 2  # whole batches, not just trickle calls


async def test_a_dead_worker_costs_no_call(worker: Rig) -> None:
    process = worker.verifier._process
    assert process is not None
    process.kill()
    await process.wait()
    count = MAX_BATCH * 3
    for i in range(count):
        worker.handler.receive(worker.call("Increment", _incr("n", 1)), f"r{i}")
    await worker.answers(count)
    assert all(r.error is None for r in worker.replies.values())
    assert worker.store.get("n") == str(count)
    assert worker.verifier._process is None  # fell back to inline for good


async def test_undecodable_and_unlinked_calls_get_an_error_reply(inline: Rig) -> None:
    inline.handler.receive(b"\xc1 not msgpack", "bad")
    inline.links.remove(inline.actor.public_key)
    inline.handler.receive(inline.call("Set", SetRequest("k", "v", 0)), "unlinked")
    await inline.answers(2)
    assert inline.replies["bad"].error
    assert "link" in (inline.replies["unlinked"].error or "")
    assert inline.store.get("k") is None and not inline.changes


def test_kvservice_checks_each_distinct_name_once_and_bounds_keys() -> None:
    store = KeyValueStore(new_node_id())
    execute(store, OPERATIONS["SetAdd"], _set_add("s", "x"))
    output, change = execute(store, OPERATIONS["SetIntersection"], ["s"] * 10_000)
    assert OPERATIONS["SetIntersection"].decode_output(output) == ["x"] and change is None
    with pytest.raises(TooLargeError):
        execute(store, OPERATIONS["Get"], "k" * (MAX_KEY_BYTES + 1))
    with pytest.raises(TooLargeError):  # counted in UTF-8 bytes, not characters
        execute(store, OPERATIONS["Get"], "é" * (MAX_KEY_BYTES // 2 + 1))


def test_metrics_keep_a_bounded_ring_and_report_quantiles() -> None:
    metrics = Metrics()
    started = time.perf_counter()
    for _ in range(SAMPLES_PER_OPERATION * 3):
        metrics.record("Get", started)
    metrics.record("Set", started, error=True)
    assert len(metrics._samples["Get"]) == SAMPLES_PER_OPERATION
    snapshot = metrics.snapshot()
    assert snapshot["Get"]["calls"] == SAMPLES_PER_OPERATION * 3
    assert snapshot["Set"] == {"calls": 1, "errors": 1} | metrics.percentiles("Set")
    assert snapshot["Get"]["p50_ms"] <= snapshot["Get"]["p90_ms"] <= snapshot["Get"]["p99_ms"]
    assert metrics.percentiles("Never") == {}


def _incr(key: str, value: int):
    from contract.keyvalue import IncrementRequest

    return IncrementRequest(key, value)


def _set_add(name: str, value: str):
    from contract.keyvalue import SetAddRequest

    return SetAddRequest(name, value)
