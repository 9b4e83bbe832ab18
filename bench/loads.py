"""The driver's phase kinds: how each one loads the system and what it measures.

Runs only inside the driver process (``bench/driver.py``), on its event loop, with payloads
signed before any of these starts. Each function takes the phase's dict (built by
:mod:`specs`) and returns the measurements that become that phase's result. Timestamps are
``time.perf_counter()`` values, comparable with the orchestrator's (``runtime.check_clock``).

* ``closed`` - signed invocations in a closed loop (:func:`closed_loop`), optionally with the
  CPU time of named processes (``/proc``, :mod:`procfs`);
* ``kv``, ``stream_read`` - the JetStream baselines: nats-py's own KV ``put``/``get`` and a
  bare ordered consumer reading a stream;
* ``visibility``, ``sweep`` - replication: when does a write on A show on B;
* ``pubsub`` - raw nats-py publish to a counting sink (``baselines.py sink``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from procfs import CLK_TCK, cpu_delta, cpu_sample, machine_busy_seconds
from stats import summarize_ms

from contract.keyvalue import resolve_operation
from contract.wire import InvocationResponse

__all__ = [
    "REQUEST_TIMEOUT",
    "closed_loop",
    "kv_closed",
    "pubsub",
    "run_closed",
    "stream_read",
    "sweep",
    "visibility",
]

#: Every request the driver sends has this timeout; a request that takes longer is an error.
REQUEST_TIMEOUT = 5.0

_GET = resolve_operation("KeyValue.Get")


def _reply_ok(data: bytes) -> bool:
    return InvocationResponse.decode(data).error is None


def _get_exists(data: bytes) -> bool:
    response = InvocationResponse.decode(data)
    if response.error is not None:
        raise RuntimeError(f"Get failed: {response.error}")
    return bool(_GET.decode_output(response.msg).exists)


async def _seconds_until(
    done: asyncio.Future[float], started: float, timeout: float, sub: Any
) -> float | None:
    """Seconds from ``started`` to the time ``done`` resolves with (None after ``timeout``);
    then ``sub``, the subscription that resolves it, is ended."""
    try:
        return await asyncio.wait_for(done, timeout) - started
    except TimeoutError:
        return None
    finally:
        await sub.unsubscribe()


def _own_cpu_sample(pids: dict[str, int] | None) -> dict[str, float | None]:
    """The named processes' CPU time and this driver's; nothing without ``pids``."""
    return cpu_sample({**pids, "driver": os.getpid()}) if pids else {}


# ------------------------------------------------------------------------------ closed loops
async def closed_loop(
    nc: Any,
    subject: str,
    payloads: list[bytes],
    *,
    n: int,
    inflight: int,
    time_limit: float,
    check: str | None,
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """``n`` requests (or until ``time_limit``) with ``inflight`` outstanding at all times."""

    def send(index: int) -> Awaitable[Any]:
        return nc.request(subject, payloads[index % len(payloads)], timeout=REQUEST_TIMEOUT)

    def verdict(index: int, msg: Any) -> str | None:
        if check == "kv" and not _reply_ok(msg.data):
            return "error reply"
        if check == "echo" and msg.data != payloads[index % len(payloads)]:
            return "echo mismatch"
        return None

    return await run_closed(send, verdict, n, inflight, time_limit, cpu_pids)


async def run_closed(
    send: Callable[[int], Awaitable[Any]],
    verdict: Callable[[int, Any], str | None],
    n: int,
    inflight: int,
    time_limit: float,
    cpu_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The closed loop itself: ``await send(i)`` for i = 0, 1, ... from ``inflight`` workers.

    ``verdict`` names what is wrong with a reply (None: fine; counted with its latency).
    With ``cpu_pids`` ({name: pid}), the CPU time each of those processes and this driver
    spent during the phase is sampled at its first send and after its last reply.
    """
    perf = time.perf_counter
    latencies: list[float] = []
    errors: list[str] = []
    next_index = 0
    cpu_before = _own_cpu_sample(cpu_pids)
    machine_before = machine_busy_seconds()
    started = perf()
    deadline = started + time_limit

    async def worker() -> None:
        nonlocal next_index
        while next_index < n and perf() < deadline:
            index = next_index
            next_index += 1
            t0 = perf()
            try:
                reply = await send(index)
            except Exception as error:
                errors.append(type(error).__name__)
                continue
            elapsed = perf() - t0
            problem = verdict(index, reply)
            if problem is None:
                latencies.append(elapsed)
            else:
                errors.append(problem)

    await asyncio.gather(*(worker() for _ in range(inflight)))
    ended = perf()
    machine_after = machine_busy_seconds()
    cpu_after = _own_cpu_sample(cpu_pids)
    result: dict[str, Any] = {
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "seconds": round(ended - started, 4),
        "rps": round(len(latencies) / (ended - started), 1) if ended > started else None,
        "t_start": started,
        "t_end": ended,
        "latency": summarize_ms(latencies),
    }
    if cpu_pids:
        result["cpu_seconds"] = cpu_delta(cpu_before, cpu_after)
        result["machine_busy_seconds"] = round(machine_after - machine_before, 4)
        result["clk_tck"] = CLK_TCK
    return result


# ------------------------------------------------------------------------------ JetStream
async def _kv_bucket(js: Any, phase: dict[str, Any], buckets: dict[str, Any]) -> Any:
    """The phase's KV bucket, created (memory storage unless told) on first use."""
    from nats.js.api import KeyValueConfig, StorageType

    name = phase["bucket"]
    if name not in buckets:
        config = KeyValueConfig(
            bucket=name,
            history=1,
            storage=StorageType.FILE if phase.get("storage") == "file" else StorageType.MEMORY,
            direct=phase.get("direct", True),
        )
        buckets[name] = await js.create_key_value(config)
    return buckets[name]


async def kv_closed(js: Any, phase: dict[str, Any], buckets: dict[str, Any]) -> dict[str, Any]:
    """nats-py ``KeyValue.put`` / ``get`` in a closed loop, keys ``{key_prefix}_{i}``."""
    kv = await _kv_bucket(js, phase, buckets)
    key_count, size = phase.get("key_count", 1000), phase.get("value_size", 32)
    keys = [f"{phase.get('key_prefix', 'bench')}_{i}" for i in range(key_count)]
    values = [f"{i:0{size}d}"[-size:].encode() for i in range(key_count)]
    send: Callable[[int], Awaitable[Any]]
    verdict: Callable[[int, Any], str | None]
    if phase["op"] == "put":

        def send(index: int) -> Awaitable[Any]:
            return kv.put(keys[index % key_count], values[index % key_count])

        def verdict(index: int, revision: Any) -> str | None:
            return None if isinstance(revision, int) and revision > 0 else "no revision"

    else:

        def send(index: int) -> Awaitable[Any]:
            return kv.get(keys[index % key_count])

        def verdict(index: int, entry: Any) -> str | None:
            return None if entry.value is not None else "no value"

    return await run_closed(
        send,
        verdict,
        phase.get("n", 10**7),
        phase["inflight"],
        phase.get("time_limit", 10.0),
        phase.get("cpu_pids"),
    )


async def stream_read(js: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """Read a stream's last message per subject with an ordered consumer, as the provider's
    JetStream replay does (stream info, then subscribe), but only counting the messages."""
    from nats.js.api import DeliverPolicy

    perf = time.perf_counter
    info = await js.stream_info(phase["stream"])
    expected = info.state.messages
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    received = 0

    async def on_message(msg: Any) -> None:
        nonlocal received
        received += 1
        if msg.metadata.num_pending == 0 and not done.done():
            done.set_result(perf())

    started = perf()
    sub = await js.subscribe(
        phase["subject"],
        stream=phase["stream"],
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        cb=on_message,
    )
    seconds = await _seconds_until(done, started, phase.get("timeout", 60.0), sub)
    return {
        "expected": expected,
        "received": received,
        "seconds": None if seconds is None else round(seconds, 4),
        "msgs_per_sec": round(received / seconds) if seconds else None,
    }


# ------------------------------------------------------------------------------ replication
async def visibility(
    nc: Any, phase: dict[str, Any], sets: list[bytes], gets: list[bytes]
) -> dict[str, Any]:
    """Open loop: Set key i on A at ``rate``/s; then Get it on B back to back until it exists.

    Reported per key: from A's Set reply to the reply of B's first Get that found the key (an
    upper bound on replication latency; the poll RTT is the resolution, reported alongside).
    """
    perf = time.perf_counter
    rate, count = phase["rate"], min(len(sets), int(phase["rate"] * phase["duration"]))
    poll_timeout = phase.get("poll_timeout", 5.0)
    after_ack: list[float] = []
    after_send: list[float] = []
    poll_rtt: list[float] = []
    polls: list[int] = []
    lost = errors = 0

    async def one(i: int) -> None:
        nonlocal lost, errors
        t0 = perf()
        try:
            reply = await nc.request(phase["set_subject"], sets[i], timeout=REQUEST_TIMEOUT)
            if not _reply_ok(reply.data):
                errors += 1
                return
            t_ack = perf()
            tries = 0
            while True:
                ts = perf()
                reply = await nc.request(phase["get_subject"], gets[i], timeout=REQUEST_TIMEOUT)
                tr = perf()
                tries += 1
                if _get_exists(reply.data):
                    after_ack.append(tr - t_ack)
                    after_send.append(tr - t0)
                    poll_rtt.append(tr - ts)
                    polls.append(tries)
                    return
                if tr - t_ack > poll_timeout:
                    lost += 1
                    return
        except Exception:
            errors += 1

    started = perf()
    tasks = []
    for i in range(count):
        delay = started + i / rate - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    ended = perf()
    return {
        "keys": count,
        "rate_target": rate,
        "rate_achieved": round(count / (ended - started), 1),
        "seconds": round(ended - started, 3),
        "lost": lost,
        "errors": errors,
        "visible_after_ack": summarize_ms(after_ack),
        "visible_after_send": summarize_ms(after_send),
        "poll_rtt": summarize_ms(poll_rtt),
        "polls_mean": round(sum(polls) / len(polls), 2) if polls else None,
    }


async def sweep(nc: Any, phase: dict[str, Any], gets: list[bytes]) -> dict[str, Any]:
    """Get every key (``inflight`` at a time), then re-poll the missing ones until all exist.

    ``t_all`` bounds from above the moment the replica had every key: the later of the first
    sweep's end and the moment the last key ever seen missing was first seen present.
    ``t_last_missing`` (the latest send time of a Get that found a key missing) bounds it from
    below.
    """
    perf = time.perf_counter
    subject, inflight = phase["subject"], phase.get("inflight", 64)
    deadline = perf() + phase.get("timeout", 30.0)
    started = perf()
    pending = list(range(len(gets)))
    ever_missing: set[int] = set()
    last_missing_seen: float | None = None
    t_all: float | None = None
    rounds = 0
    first_missing: int | None = None
    first_sweep_end: float | None = None
    errors = 0

    async def check(indexes: list[int], out: list[tuple[int, bool, float, float]]) -> None:
        nonlocal errors
        while indexes:
            i = indexes.pop()
            ts = perf()
            try:
                reply = await nc.request(subject, gets[i], timeout=REQUEST_TIMEOUT)
                out.append((i, _get_exists(reply.data), ts, perf()))
            except Exception:
                errors += 1
                out.append((i, False, ts, perf()))

    while pending and perf() < deadline:
        queue = list(reversed(pending))
        results: list[tuple[int, bool, float, float]] = []
        await asyncio.gather(*(check(queue, results) for _ in range(min(inflight, len(queue)))))
        still = []
        for i, exists, ts, tr in results:
            if exists:
                if i in ever_missing:
                    t_all = tr if t_all is None else max(t_all, tr)
            else:
                ever_missing.add(i)
                still.append(i)
                last_missing_seen = ts if last_missing_seen is None else max(last_missing_seen, ts)
        if rounds == 0:
            first_missing, first_sweep_end = len(still), perf()
        rounds += 1
        pending = sorted(still)
    ended = perf()
    if pending:
        t_all = None
    elif first_sweep_end is not None:
        # Keys never seen missing were present when checked, at the latest by the first
        # sweep's end; keys seen missing became present by the time they were seen.
        t_all = max(t_all or first_sweep_end, first_sweep_end)
    return {
        "keys": len(gets),
        "complete": not pending,
        "remaining": len(pending),
        "missing_at_first_sweep": first_missing,
        "ever_missing": len(ever_missing),
        "first_sweep_seconds": round((first_sweep_end or ended) - started, 4),
        "rounds": rounds,
        "errors": errors,
        "t_start": started,
        "t_end": ended,
        "t_all": t_all,
        "t_last_missing": last_missing_seen,
    }


# ------------------------------------------------------------------------------ raw NATS
async def pubsub(nc: Any, phase: dict[str, Any]) -> dict[str, Any]:
    """Raw nats-py throughput: publish ``count`` messages; the sink says when it has them all."""
    perf = time.perf_counter
    done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def on_done(msg: Any) -> None:
        if not done.done():
            done.set_result(perf())

    sub = await nc.subscribe(phase["done_subject"], cb=on_done)
    await nc.flush()
    body = os.urandom(phase["size"] // 2).hex().encode()[: phase["size"]]
    started = perf()
    for _ in range(phase["count"]):
        await nc.publish(phase["subject"], body)
    await nc.flush()
    published = perf()
    seconds = await _seconds_until(done, started, phase.get("timeout", 30.0), sub)
    return {
        "messages": phase["count"],
        "size": len(body),
        "publish_seconds": round(published - started, 4),
        "seconds": None if seconds is None else round(seconds, 4),
        "msgs_per_sec": None if not seconds else round(phase["count"] / seconds, 1),
    }
