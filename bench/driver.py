"""The load driver: its own process, ``python bench/driver.py``, with a JSON spec on stdin.

A benchmark script (the orchestrator, :mod:`orchestra`) starts nats-server and the providers and
leaves the measuring to this process, so neither the system under test nor a baseline shares an
event loop or a GIL with the load generator. The driver pre-builds every request payload before
any clock starts (signing invocations is the host's cost, not the provider's; the kit's
``Invoker`` signs them exactly as the OTP host does), runs the phases in order (:mod:`loads`)
and prints one JSON result line.

Protocol: line 1 on stdin is the spec (:mod:`specs`); a phase of kind ``barrier`` prints
``{"event": "barrier", "name": ...}`` and waits for one more stdin line, so the orchestrator
can act (e.g. heal a fault proxy) between phases without the driver re-signing anything. The
last stdout line is ``{"event": "result", "sign_seconds": ..., "phases": [...]}``. All
timestamps are ``time.perf_counter()`` values, which on Linux is CLOCK_MONOTONIC: comparable
across the processes of one machine (checked at start-up).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import loads
from runtime import check_clock, run_async

from contract.keyvalue import CONTRACT_ID, SetRequest, resolve_operation
from contract.nkeys import KeyPair
from wasmbus_testkit import Invoker

__all__ = ["build_payloads", "main"]


def build_payloads(identity: dict[str, str], spec: dict[str, Any]) -> list[bytes]:
    """Signed invocation bytes: ``spec`` = {provider_key, op, key_fmt, key_start, key_count,
    count, value_size, key_step}; request ``i`` uses key number
    ``key_start + (i % key_count) * key_step``."""
    invoker = Invoker(
        None,  # only builds: the driver sends the bytes itself
        lattice_prefix=identity["prefix"],
        provider_key=spec["provider_key"],
        contract_id=CONTRACT_ID,
        signer=KeyPair.from_seed(identity["cluster_seed"]),
        actor_key=identity["actor"],
        link_name=identity["link_name"],
    )
    op = resolve_operation(f"KeyValue.{spec['op']}")
    key_fmt, start = spec.get("key_fmt", "bench:{i}"), spec.get("key_start", 0)
    key_count, step = spec.get("key_count", spec["count"]), spec.get("key_step", 1)
    value_size = spec.get("value_size", 32)
    payloads = []
    for i in range(spec["count"]):
        key = key_fmt.format(i=start + (i % key_count) * step)
        arg: Any
        if spec["op"] == "Set":
            value = f"{i:0{value_size}d}"[-value_size:]
            arg = SetRequest(key, value, 0)
        else:
            arg = key
        payloads.append(invoker.build(op.wire_name, op.encode_input(arg)).encode())
    return payloads


async def _run_phase(
    nc: Any, js: Any, phase: dict[str, Any], payloads: dict[str, list[bytes]], buckets: dict
) -> dict[str, Any]:
    """One phase of the spec, by kind; its result dict."""
    kind = phase["kind"]
    if kind == "closed":
        return await loads.closed_loop(
            nc,
            phase["subject"],
            payloads[phase["payloads"]],
            n=phase["n"],
            inflight=phase["inflight"],
            time_limit=phase.get("time_limit", 10.0),
            check=phase.get("check"),
            cpu_pids=phase.get("cpu_pids"),
        )
    if kind == "kv":
        return await loads.kv_closed(js, phase, buckets)
    if kind == "stream_read":
        return await loads.stream_read(js, phase)
    if kind == "visibility":
        sets, gets = payloads[phase["set_payloads"]], payloads[phase["get_payloads"]]
        return await loads.visibility(nc, phase, sets, gets)
    if kind == "sweep":
        return await loads.sweep(nc, phase, payloads[phase["payloads"]])
    if kind == "pubsub":
        return await loads.pubsub(nc, phase)
    if kind == "barrier":
        print(json.dumps({"event": "barrier", "name": phase["name"]}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        return {"t": time.perf_counter()}
    if kind == "sleep":
        await asyncio.sleep(phase["seconds"])
        return {}
    raise ValueError(f"unknown phase kind {kind!r}")


async def _main() -> None:
    import nats

    spec = json.loads(sys.stdin.readline())
    identity = spec["identity"]
    built = time.perf_counter()
    payloads = {name: build_payloads(identity, p) for name, p in spec["payloads"].items()}
    sign_seconds = time.perf_counter() - built
    nc = await nats.connect(spec["url"], name="kvbench-driver", max_reconnect_attempts=0)
    js = nc.jetstream()  # only the kv and stream_read phases use it
    buckets: dict[str, Any] = {}
    results: list[dict[str, Any]] = []
    try:
        for phase in spec["phases"]:
            result = await _run_phase(nc, js, phase, payloads, buckets)
            results.append({"name": phase["name"], "kind": phase["kind"], **result})
    finally:
        await nc.close()
    print(
        json.dumps({"event": "result", "sign_seconds": sign_seconds, "phases": results}), flush=True
    )


def main() -> None:
    check_clock()
    run_async(_main())


if __name__ == "__main__":
    main()
