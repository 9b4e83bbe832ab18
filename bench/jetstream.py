"""Durable JetStream mode: write and read throughput against nats-py's own KV, and replay time.

One nats-server with JetStream (memory storage), one run, one driver process (its own
interpreter) that drives both the system under test and the baselines, alternating them round
by round so drift on a noisy machine hits both alike:

a. **Writes.** Provider ``Set`` (REPLICATION=jetstream: the actor's reply waits for JetStream's
   ack of the key's merged state) via signed RPC invocations, pre-signed before any clock
   starts, vs nats-py ``KeyValue.put`` into a memory-storage bucket (history 1), both with 64
   in flight over the same 1000 keys and 32-byte values. Reported: requests/s of each (median
   over rounds) and provider/KV.
b. **Reads.** Provider ``Get`` (served from its local memory) vs nats-py ``KeyValue.get`` (a
   JetStream round trip; the bucket allows direct get, as the Go client and ``nats`` CLI create
   it), 64 in flight, the same keys.
c. **Replay.** The stream ``LATTICECACHE_<prefix>`` is filled directly with records encoded
   exactly as the provider writes them (``KeyValueStore.set`` -> ``encode_record`` on subject
   ``lc.<prefix>.<key_token(key)>``), by core-NATS publishes in batches, each checked against
   the stream's message count. Then a provider starts in JetStream mode on that stream: its own
   replay time (``seconds`` of its ``stream replay complete`` log line: stream info -> last
   record applied) and end to end (spawn -> that line's timestamp) give keys/s. Baseline: a
   bare nats-py ordered consumer (the provider's own subscription, only counting messages) in
   the driver process, read before and after the provider's start-ups (mean). Each size is
   replayed by ``--replay-runs`` fresh providers one after another (median reported); two sizes
   show how the rate holds as the stream grows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

from orchestra import DriverProcess, Lattice, Provider, Workspace, log_time
from procfs import wait_child
from runtime import check_clock, fill_defaults
from specs import closed, driver_spec, kv_payloads, kv_phase
from stats import finish, fmt, median, print_table, ratio

from wasmbus_testkit import NatsServer

KEYS = 1000
INFLIGHT = 64
BUCKET = "kvbench"
REPLAY_KEY_FMT = "user:{i}:session"
#: Core-NATS publishes per batch while filling the stream (JetStream's ingest queue is bounded;
#: each batch is checked against the stream's message count and re-sent with acks if short).
FILL_BATCH = 5000
CPU_COLUMNS = ("nats-server", "driver", "provider", "verify-worker")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (<= ~10 s)")
    parser.add_argument("--only", default="a,b,c", help="parts to run, e.g. 'c'")
    parser.add_argument("--seconds", type=float, help="(a, b) time limit per phase")
    parser.add_argument("--rounds", type=int, help="(a, b) provider/KV alternations")
    parser.add_argument("--payloads", type=int, help="(a, b) pre-signed invocations per op")
    parser.add_argument("--keys", help="(c) stream sizes, comma-separated")
    parser.add_argument("--replay-runs", type=int, help="(c) provider start-ups per size")
    args = parser.parse_args()
    fill_defaults(
        args,
        quick={
            "seconds": 0.4,
            "rounds": 1,
            "payloads": 1500,
            "keys": "5000,20000",
            "replay_runs": 1,
        },
        full={
            "seconds": 2.0,
            "rounds": 3,
            "payloads": 12000,
            "keys": "20000,100000",
            "replay_runs": 3,
        },
    )
    args.parts = {p.strip() for p in args.only.split(",") if p.strip()}
    args.sizes = [int(x) for x in str(args.keys).split(",")]
    return args


def js_link(url: str, cache_prefix: str) -> dict[str, str]:
    return {"NATS_URL": url, "REPLICATION": "jetstream", "CACHE_PREFIX": cache_prefix}


# ------------------------------------------------------------------------ a, b: throughput
def run_throughput(args: argparse.Namespace, ws: Workspace, server: NatsServer) -> dict[str, Any]:
    lattice = Lattice(server, prefix="jsbench")
    provider = Provider(ws, lattice, "provider", js_link(server.url, "jsbench")).start()
    provider.wait_ready()
    provider.wait_log("stream replay complete")
    cpu = {
        "nats-server": server.pid,
        "provider": provider.proc.pid,
        "verify-worker": wait_child(provider.proc.pid),
    }
    secs, n = args.seconds, args.payloads
    keys: dict[str, Any] = {"key_fmt": "bench:{i}", "key_count": KEYS, "value_size": 32}
    kv = {"key_count": KEYS, "value_size": 32}
    payloads = {
        "set": kv_payloads(provider, "Set", count=n, **keys),
        "get": kv_payloads(provider, "Get", count=n, **keys),
    }
    # Warm-up: creates every key on both sides (so every Get hits) and warms the code paths.
    phases = [
        closed("warmup set", provider.rpc, "set", 16, max(secs, 1.0), n=2 * KEYS),
        kv_phase("warmup kv put", BUCKET, "put", 16, max(secs, 1.0), n=2 * KEYS, **kv),
    ]
    for r in range(args.rounds):
        phases += [
            closed(f"provider set #{r}", provider.rpc, "set", INFLIGHT, secs, cpu_pids=cpu),
            kv_phase(f"kv put #{r}", BUCKET, "put", INFLIGHT, secs, cpu_pids=cpu, **kv),
        ]
    phases += [
        closed("warmup get", provider.rpc, "get", 16, secs, n=KEYS),
        kv_phase("warmup kv get", BUCKET, "get", 16, secs, n=KEYS, **kv),
    ]
    for r in range(args.rounds):
        phases += [
            closed(f"provider get #{r}", provider.rpc, "get", INFLIGHT, secs, cpu_pids=cpu),
            kv_phase(f"kv get #{r}", BUCKET, "get", INFLIGHT, secs, cpu_pids=cpu, **kv),
        ]
    spec = driver_spec(server.url, phases, identity=lattice.driver_identity(), payloads=payloads)
    driven = DriverProcess(ws, spec).run(timeout=300)
    by_name = {p["name"]: p for p in driven["phases"]}
    provider.kill()
    results = {}
    for part, (ours, theirs) in (("a_writes", ("set", "put")), ("b_reads", ("get", "get"))):
        rounds = [
            {
                "provider": _brief(by_name[f"provider {ours} #{r}"]),
                "kv": _brief(by_name[f"kv {theirs} #{r}"]),
            }
            for r in range(args.rounds)
        ]
        provider_rps = median([r["provider"]["rps"] or 0.0 for r in rounds])
        kv_rps = median([r["kv"]["rps"] or 0.0 for r in rounds])
        results[part] = {
            "provider_op": "Set (signed RPC, JetStream-acknowledged)"
            if ours == "set"
            else "Get (signed RPC, local memory)",
            "kv_op": f"nats-py KeyValue.{theirs} (memory bucket, history 1, direct get)",
            "inflight": INFLIGHT,
            "provider_rps": round(provider_rps, 1),
            "kv_rps": round(kv_rps, 1),
            "ratio_provider_vs_kv": ratio(provider_rps, kv_rps),
            "provider_p50_ms": median([r["provider"]["p50_ms"] for r in rounds]),
            "kv_p50_ms": median([r["kv"]["p50_ms"] for r in rounds]),
            "provider_cpu_us_per_request": _cpu_median([r["provider"] for r in rounds]),
            "kv_cpu_us_per_request": _cpu_median([r["kv"] for r in rounds]),
            "other_cores_busy_median": median(
                [b[w]["other_cores_busy"] or 0.0 for b in rounds for w in ("provider", "kv")]
            ),
            "rounds": rounds,
        }
    results["throughput_errors"] = sum(p.get("errors", 0) for p in driven["phases"])
    results["driver_sign_seconds"] = round(driven["sign_seconds"], 2)
    return results


def _brief(phase: dict[str, Any]) -> dict[str, Any]:
    lat, requests = phase["latency"], phase["requests"]
    cpu = phase.get("cpu_seconds") or {}
    per_request = {
        name: round(v / requests * 1e6, 1) for name, v in cpu.items() if v is not None and requests
    }
    if per_request:
        per_request["total"] = round(sum(per_request.values()), 1)
    return {
        "rps": phase["rps"],
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "requests": requests,
        "errors": phase["errors"],
        "error_kinds": phase["error_kinds"],
        "cpu_us_per_request": per_request,
        **_cores(phase, cpu),
    }


def _cores(phase: dict[str, Any], cpu: dict[str, float | None]) -> dict[str, float | None]:
    """Cores busy during the phase: ours (the sampled processes) and the rest of the machine."""
    machine, wall = phase.get("machine_busy_seconds"), phase["seconds"]
    if machine is None or not wall:
        return {"ours_cores_busy": None, "other_cores_busy": None}
    ours = sum(v for v in cpu.values() if v is not None)
    return {
        "ours_cores_busy": round(ours / wall, 3),
        "other_cores_busy": round(max(machine - ours, 0.0) / wall, 3),
    }


def _cpu_median(briefs: list[dict[str, Any]]) -> dict[str, float]:
    """Per process, the median over rounds of CPU µs per request."""
    names = {name for b in briefs for name in b["cpu_us_per_request"]}
    return {
        name: round(median([b["cpu_us_per_request"].get(name, 0.0) for b in briefs]), 1)
        for name in sorted(names)
    }


# ------------------------------------------------------------------------ c: replay
async def fill_stream(lattice: Lattice, count: int) -> dict[str, Any]:
    """Create the provider's stream (its own settings, the lattice's prefix as cache prefix)
    and put ``count`` records in it."""
    import nats

    from provider.replication.config import ReplicationConfig
    from provider.replication.jetstream import encode_record, key_token, stream_settings
    from provider.store import KeyValueStore

    url = lattice.server.url
    config = ReplicationConfig.from_values(
        js_link(url, lattice.prefix), lattice_prefix=lattice.prefix, link_name=lattice.link_name
    )
    settings = stream_settings(config)
    prefix = settings.subjects[0][:-1]  # "lc.{prefix}."
    store = KeyValueStore(node_id=uuid.uuid4().hex[:16])
    built = time.perf_counter()
    records = []
    for i in range(count):
        key = REPLAY_KEY_FMT.format(i=i)
        records.append((prefix + key_token(key), encode_record(store.set(key, f"{i:032x}"))))
    build_seconds = time.perf_counter() - built
    nc = await nats.connect(url, name="kvbench-filler")
    js = nc.jetstream()
    started = time.perf_counter()
    resent = 0
    try:
        await js.add_stream(settings)
        for start in range(0, count, FILL_BATCH):
            batch = records[start : start + FILL_BATCH]
            for subject, body in batch:
                await nc.publish(subject, body)
            await nc.flush()
            if not await _stream_reaches(js, settings.name, start + len(batch)):
                resent += len(batch)  # the server dropped some: send the batch again, acked
                for offset in range(0, len(batch), 256):
                    await asyncio.gather(
                        *(js.publish(s, b) for s, b in batch[offset : offset + 256])
                    )
        info = await js.stream_info(settings.name)
    finally:
        await nc.close()
    if info.state.messages != count:
        raise RuntimeError(f"stream holds {info.state.messages} records, wanted {count}")
    return {
        "stream": settings.name,
        "subject": f"{prefix}>",
        "records": info.state.messages,
        "stream_bytes": info.state.bytes,
        "build_seconds": round(build_seconds, 2),
        "fill_seconds": round(time.perf_counter() - started, 2),
        "resent_with_ack": resent,
    }


async def _stream_reaches(js: Any, stream: str, messages: int, stall: float = 1.0) -> bool:
    """Wait until ``stream`` holds ``messages``; False once its count stopped growing."""
    last, changed = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = (await js.stream_info(stream)).state.messages
        if now >= messages:
            return True
        if now != last:
            last, changed = now, time.monotonic()
        elif time.monotonic() - changed > stall:
            return False
        await asyncio.sleep(0.01)
    return False


def run_replay(args: argparse.Namespace, ws: Workspace, server: NatsServer) -> dict[str, Any]:
    url = server.url
    runs = []
    for size in args.sizes:
        prefix = f"replay{size}"
        lattice = Lattice(server, prefix=prefix)
        filled = asyncio.run(fill_stream(lattice, size))
        timeout = 30 + size / 2000
        read = {"kind": "stream_read", "stream": filled["stream"], "subject": filled["subject"]}
        raw_before = _raw_read(ws, url, read, f"raw{size}-before", timeout)
        starts = []
        for attempt in range(args.replay_runs):  # one provider at a time, each from scratch
            p = Provider(ws, lattice, f"replay{size}-{attempt}", js_link(url, prefix)).start()
            event = p.wait_log("stream replay complete", timeout)
            p.kill()
            starts.append(_replay_figures(p, event, size))
        raw_after = _raw_read(ws, url, read, f"raw{size}-after", timeout)
        raw_rates = [r["msgs_per_sec"] for r in (raw_before, raw_after) if r["msgs_per_sec"]]
        raw_rate = sum(raw_rates) / len(raw_rates) if raw_rates else None
        seconds = median([s["replay_seconds"] for s in starts])
        end_to_end = median([s["end_to_end_seconds"] for s in starts])
        rate = round(size / seconds) if seconds else None
        runs.append(
            {
                "keys": size,
                "fill": filled,
                "replay_seconds": round(seconds, 3),
                "keys_per_sec": rate,
                "end_to_end_seconds": round(end_to_end, 3),
                "end_to_end_keys_per_sec": round(size / end_to_end) if end_to_end > 0 else None,
                "provider_starts": starts,
                "raw_consumer": {"before": raw_before, "after": raw_after},
                "raw_msgs_per_sec": None if raw_rate is None else round(raw_rate),
                "ratio_vs_raw_consumer": ratio(rate, raw_rate),
            }
        )
    rates = [r["keys_per_sec"] for r in runs]
    return {
        "method": "stream filled with provider-encoded records; provider spawned in JetStream "
        "mode; keys/s = keys / the provider's own replay seconds (stream info -> last record "
        "applied); end_to_end from spawn to its 'stream replay complete' log line; baseline: "
        "a bare nats-py ordered consumer (last per subject), mean of before and after",
        "runs": runs,
        "rate_ratio_largest_vs_smallest": ratio(rates[-1], rates[0]) if len(rates) > 1 else None,
    }


def _replay_figures(p: Provider, event: dict[str, Any], size: int) -> dict[str, Any]:
    if event["keys"] != size:
        raise RuntimeError(f"{p.name} replayed {event['keys']} keys, the stream holds {size}")
    seconds = event["seconds"]
    end_to_end = log_time(event) - (p.started_wall or 0)
    return {
        "replay_seconds": seconds,
        "keys_per_sec": round(size / seconds) if seconds else None,
        "end_to_end_seconds": round(end_to_end, 3),
    }


def _raw_read(
    ws: Workspace, url: str, phase: dict[str, Any], name: str, timeout: float
) -> dict[str, Any]:
    spec = driver_spec(url, [{**phase, "name": name, "timeout": timeout}])
    result = DriverProcess(ws, spec, name=name).run(timeout=timeout + 30)["phases"][0]
    if result["received"] < result["expected"] or result["seconds"] is None:
        raise RuntimeError(f"{name}: read {result['received']} of {result['expected']}")
    return {k: result[k] for k in ("expected", "received", "seconds", "msgs_per_sec")}


# ------------------------------------------------------------------------ output
def report(results: dict[str, Any]) -> None:
    rows = []
    for part, label in (("a_writes", "write"), ("b_reads", "read")):
        r = results.get(part)
        if r is None:
            continue
        rows.append(
            [
                f"{label}: provider vs KV",
                r["provider_rps"],
                r["kv_rps"],
                r["ratio_provider_vs_kv"],
                r["provider_p50_ms"],
                r["kv_p50_ms"],
            ]
        )
    if rows:
        print_table(
            f"JetStream mode vs nats-py KV, {INFLIGHT} in flight (median of rounds)",
            ["", "provider req/s", "KV ops/s", "ratio", "provider p50 ms", "KV p50 ms"],
            rows,
        )
        rows = []
        for part, label in (("a_writes", "write"), ("b_reads", "read")):
            r = results.get(part)
            for who in ("provider", "kv"):
                us = r[f"{who}_cpu_us_per_request"]
                rows.append(
                    [
                        f"{label}: {who}",
                        *(us.get(n) for n in CPU_COLUMNS),
                        us.get("total"),
                        median([b[who]["ours_cores_busy"] or 0.0 for b in r["rounds"]]),
                        median([b[who]["other_cores_busy"] or 0.0 for b in r["rounds"]]),
                    ]
                )
        print_table(
            "CPU µs per request (/proc utime+stime; median of rounds)",
            ["", *CPU_COLUMNS, "total", "ours busy", "others busy"],
            rows,
        )
        print("  writes: provider Set (signed RPC, reply after JetStream ack) vs KeyValue.put")
        print("  reads: provider Get (local memory) vs KeyValue.get (direct get round trip)")
        if results.get("throughput_errors"):
            print(f"  WARNING: {results['throughput_errors']} failed requests (see JSON)")
    replay = results.get("c_replay")
    if replay:
        rows = [
            [
                r["keys"],
                r["replay_seconds"],
                r["keys_per_sec"],
                r["end_to_end_seconds"],
                r["end_to_end_keys_per_sec"],
                r["raw_msgs_per_sec"],
                r["ratio_vs_raw_consumer"],
            ]
            for r in replay["runs"]
        ]
        print_table(
            "Start-up replay of the stream (provider's own time; end to end from spawn; "
            "median of start-ups)",
            ["keys", "replay s", "keys/s", "end-to-end s", "e2e keys/s", "raw consumer/s", "ratio"],
            rows,
        )
        print(
            "  rate, largest vs smallest size: "
            f"{fmt(replay['rate_ratio_largest_vs_smallest'])} (1.0 = linear)"
        )


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    check_clock()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with Workspace("jetstream") as ws:
        server = ws.start_nats(jetstream=True)
        mark = time.monotonic()
        if args.parts & {"a", "b"}:
            results |= run_throughput(args, ws, server)
            seconds["a,b"], mark = round(time.monotonic() - mark, 1), time.monotonic()
        if "c" in args.parts:
            results["c_replay"] = run_replay(args, ws, server)
            seconds["c"] = round(time.monotonic() - mark, 1)
    results["part_seconds"] = seconds
    report(results)
    name = (
        "jetstream" if args.parts >= {"a", "b", "c"} else f"jetstream-{''.join(sorted(args.parts))}"
    )
    return finish(name, results, quick=args.quick, started=started)


if __name__ == "__main__":
    sys.exit(main())
