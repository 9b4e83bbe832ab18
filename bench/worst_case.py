"""Worst-case single calls: how long the biggest allowed call holds the provider's event loop.

One nats-server (JetStream on: replies over 900 KiB go through the object store), one standalone
provider, the driver in this process. For each scenario the driver first builds the data, then
sends the one expensive call while a prober sends health requests back to back; the provider
answers health on the same event loop, so the slowest health reply during the call is the
loop stall that call caused (compare with the idle health figures). Scenarios:

* the SetUnion / SetIntersection attack: one 2,000-member set named 150,000 times (~600 KB);
* 10,000 distinct (missing) set names, the most SetUnion accepts;
* SetUnion of 25 distinct 2,000-member sets: the 50,000 members it may read at most;
* the largest ListRange by items (50,000 short items) and by bytes (~16 MiB of 100 KB values);
* Del of that 50,000-item list; Set of an 800 KB value.

Run: ``.venv/bin/python bench/worst_case.py [--quick]`` (``--quick``: smaller data, ~10 s).
The bounds themselves are in :mod:`provider.store.store` (``MAX_*``) and the README's "Limits".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import nats
from orchestra import Lattice, Provider, Workspace
from stats import print_table

from contract.client import KeyValueClient
from contract.keyvalue import (
    OPERATIONS,
    ListAddRequest,
    ListRangeRequest,
    SetAddRequest,
    SetRequest,
)
from contract.wire import HEALTH_REQUEST, InvocationResponse
from provider.store import MAX_RESULT_BYTES, MAX_RESULT_ITEMS, MAX_SET_NAMES, MAX_SET_SCAN

GOAL_STALL_MS = 50.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller lists (smoke run)")
    return parser.parse_args()


async def pipelined(kv: KeyValueClient, name: str, args: list, inflight: int = 256) -> None:
    """Send ``args`` as ``name`` calls, ``inflight`` at a time; any error aborts."""
    op = OPERATIONS[name]
    for start in range(0, len(args), inflight):
        replies = await asyncio.gather(
            *(kv.invoke(op.wire_name, op.encode_input(a)) for a in args[start : start + inflight])
        )
        for reply in replies:
            if reply.error:
                raise RuntimeError(f"{name} failed: {reply.error}")


async def health_latencies(nc, subject: str, stop: asyncio.Event) -> list[float]:
    samples = []
    while not stop.is_set():
        started = time.perf_counter()
        await nc.request(subject, HEALTH_REQUEST, timeout=10)
        samples.append(time.perf_counter() - started)
    return samples


async def stalled_call(nc, kv: KeyValueClient, health: str, name: str, arg) -> dict:
    """One call with health probed meanwhile: call ms, slowest and median health reply ms."""
    op = OPERATIONS[name]
    msg = op.encode_input(arg)
    # Signed and encoded before the clock starts: the driver's own work must not delay probes.
    data = kv.build_invocation(op.wire_name, msg).encode()
    stop = asyncio.Event()
    prober = asyncio.create_task(health_latencies(nc, health, stop))
    await asyncio.sleep(0.05)  # the prober is in its stride
    started = time.perf_counter()
    reply = InvocationResponse.decode((await nc.request(kv.subject, data, timeout=60)).data)
    call = time.perf_counter() - started
    await asyncio.sleep(0.05)  # a chunked reply is still being stored: keep probing
    stop.set()
    samples = await prober
    return {
        "call_ms": call * 1000,
        "arg_bytes": len(msg),
        "reply_bytes": reply.content_length or len(reply.msg),
        "error": reply.error,
        "health_max_ms": max(samples) * 1000,
        "health_p50_ms": statistics.median(samples) * 1000,
        "health_samples": len(samples),
    }


async def drive(lattice: Lattice, provider: Provider, quick: bool) -> None:
    nc = await nats.connect(lattice.server.url)
    kv = lattice.client(nc, provider.key, timeout=30)
    health = provider.subjects.health
    idle = []
    for _ in range(50):
        started = time.perf_counter()
        await nc.request(health, HEALTH_REQUEST, timeout=5)
        idle.append(time.perf_counter() - started)

    list_items = 10_000 if quick else MAX_RESULT_ITEMS
    big_values = 32 if quick else MAX_RESULT_BYTES // 100_000
    union_sets = 5 if quick else MAX_SET_SCAN // 2000
    print(
        f"building: {union_sets + 1} 2,000-member sets, {list_items:,}-item list, "
        f"{big_values} x 100 KB list"
    )
    await pipelined(kv, "SetAdd", [SetAddRequest("atk", f"member-{i}") for i in range(2000)])
    await pipelined(
        kv,
        "SetAdd",
        [SetAddRequest(f"u{j}", f"u{j}-{i}") for j in range(union_sets) for i in range(2000)],
    )
    await pipelined(kv, "ListAdd", [ListAddRequest("long", f"{i:032x}") for i in range(list_items)])
    await pipelined(
        kv, "ListAdd", [ListAddRequest("wide", "w" * 100_000) for _ in range(big_values)], 16
    )

    scenarios = [
        ("SetUnion: 2,000-member set x 150,000 names", "SetUnion", ["atk"] * 150_000),
        ("SetIntersection: same attack", "SetIntersection", ["atk"] * 150_000),
        (
            f"SetUnion: {MAX_SET_NAMES:,} distinct missing names",
            "SetUnion",
            [f"missing-{i}" for i in range(MAX_SET_NAMES)],
        ),
        (
            f"SetUnion: {union_sets} x 2,000 distinct members",
            "SetUnion",
            [f"u{j}" for j in range(union_sets)],
        ),
        (f"ListRange: {list_items:,} items", "ListRange", ListRangeRequest("long", 0, -1)),
        (
            f"ListRange: {big_values} x 100 KB",
            "ListRange",
            ListRangeRequest("wide", 0, -1),
        ),
        ("Set: 800 KB value", "Set", SetRequest("huge", "h" * 800_000, 0)),
        (f"Del: {list_items:,}-item list", "Del", "long"),
    ]
    rows = []
    for title, name, arg in scenarios:
        result = await stalled_call(nc, kv, health, name, arg)
        rows.append(
            (
                title,
                round(result["call_ms"], 1),
                round(result["health_max_ms"], 1),
                round(result["health_p50_ms"], 1),
                result["health_samples"],
                result["arg_bytes"],
                result["reply_bytes"],
                (result["error"] or "ok")[:40],
            )
        )
    await nc.close()
    idle_ms = statistics.median(idle) * 1000
    print_table(
        f"Worst-case calls (idle health p50 {idle_ms:.2f} ms, max {max(idle) * 1000:.2f} ms)",
        ["call", "call ms", "health max ms", "health p50 ms", "probes", "arg B", "reply B", "ok"],
        rows,
    )
    worst = max(rows, key=lambda row: row[2])
    print(
        f"\nworst loop stall seen by health: {worst[2]} ms during '{worst[0]}' "
        f"(goal: every call < {GOAL_STALL_MS:.0f} ms of loop)"
    )


def main() -> int:
    args = parse_args()
    with Workspace("worst-case") as ws:
        server = ws.start_nats(jetstream=True)
        lattice = Lattice(server)
        provider = Provider(ws, lattice, "provider", {"MAX_MEMORY": "0"}).start()
        provider.wait_ready()
        asyncio.run(drive(lattice, provider, args.quick))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
