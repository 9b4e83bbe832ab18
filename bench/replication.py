"""Replication over plain NATS: latency, throughput, replay, memory, anti-entropy repair.

Parts (``--only a,b,...``; all by default), each against a baseline from the same run:

a. **Replication latency.** Open loop at ``--rate`` writes/s on A for ``--seconds``: the driver
   sends ``Set k`` to A and, as soon as A acknowledges, sends ``Get k`` to B back to back until
   B has it. Reported: time from A's ack to the reply of B's first successful Get. That is an
   upper bound on the true latency; its resolution is one Get round trip to B, reported
   alongside (``poll_rtt``). No clocks are compared across machines (there is only one), no
   subscription to replication subjects is needed, and what is measured is what an actor sees.
b. **Sustained replicated writes.** ``Set`` on A with 64 in flight, then a sentinel Set once
   all are acknowledged; B applies A's batches in order, so the moment B serves the sentinel is
   the moment it has applied everything before it (a sample of other keys is checked too).
   Rate = keys / (first Set sent -> sentinel visible on B). Baseline: raw nats-py publish ->
   subscribe of messages the size of one signed Set invocation, to a subscriber in its own
   process, measured before and after (mean).
c. **Snapshot replay.** A *seeder* process fills a ``KeyValueStore`` in-process (loading 1M
   keys through RPC would take minutes: ~8k signed Sets/s, see ``rpc.py``) and serves it with
   the provider's own ``NatsReplicator``. Provider A joins and replays from the seeder; the
   seeder is killed; provider B joins and replays from A. Reported for both joiners: keys/s
   over the provider's own replay time (the ``seconds`` of its ``replay complete`` log line)
   and end to end (process spawn -> that log line's timestamp, interpreter start included).
d. **Memory per key** (in-process, no NATS; each variant in a fresh interpreter): RSS delta
   of ``--memory-keys`` ``KeyValueStore.set`` calls (``user:{i}:session`` -> 32-char values)
   vs a plain dict holding the same strings; also with digests tracked (as a replicating
   provider does); at 1/10 of the keys (at least 100k; bounds the runtime), with the strings
   built beforehand (container overhead only) and a ``tracemalloc`` cross-check.
e. **Anti-entropy repair.** B's replication connection goes through a FaultProxy that drops
   5% of the messages delivered to B on the events subject prefix (change batches and
   digests). The proxy drops *deliveries* (server -> client), so it has to sit on the
   receiving side, B, for A's writes to be lost. N keys are written on A, the proxy is healed,
   and B is swept with Gets until it has every key. Repair traffic is counted by the proxy
   per subject class (the provider keeps repair counters in-process but does not expose them
   over NATS).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from driver import build_payloads
from orchestra import DriverProcess, Lattice, Provider, Workspace, log_time, start_sink
from runtime import check_clock, fill_defaults, run_async
from specs import closed, driver_spec, kv_payloads, sweep
from stats import finish, fmt, print_table, ratio

from wasmbus_testkit import HOST, NatsServer
from wasmbus_testkit.faultproxy import DELIVERY_OPS, PAYLOAD_OPS, FaultProxy, Frame, Mode

GOAL_REPLAY_KEYS_PER_SEC = 100_000
GOAL_MEMORY_RATIO = 2.0
DROP_PROBABILITY = 0.05
MEMORY_KEY_FMT = "user:{i}:session"
ALL_PARTS = frozenset("abcde")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (<= ~10 s)")
    parser.add_argument("--only", default="a,b,c,d,e", help="parts to run, e.g. 'c,d'")
    parser.add_argument("--rate", type=float, help="(a) writes/s")
    parser.add_argument("--seconds", type=float, help="(a) duration")
    parser.add_argument("--writes", type=int, help="(b) keys written")
    parser.add_argument("--keys", help="(c) snapshot sizes, comma-separated")
    parser.add_argument("--memory-keys", type=int, help="(d) keys")
    parser.add_argument("--ae-keys", type=int, help="(e) keys written while dropping")
    parser.add_argument(
        "--ae-heartbeat", type=float, help="(e) REPLAY_HEARTBEAT_SECS (default: provider's)"
    )
    parser.add_argument("--role", choices=("seeder", "memory"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--link-name", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tracemalloc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--prebuilt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    fill_defaults(
        args,
        quick={
            "rate": 100,
            "seconds": 1.0,
            "writes": 2000,
            "keys": "2000,10000",
            "memory_keys": 20_000,
            "ae_keys": 1000,
            "ae_heartbeat": 1.0,  # a smoke run cannot wait for the default 5 s period
        },
        full={
            "rate": 200,
            "seconds": 10.0,
            "writes": 20_000,
            "keys": "100000,1000000",
            "memory_keys": 1_000_000,
            "ae_keys": 10_000,
        },
    )
    args.parts = {p.strip() for p in args.only.split(",") if p.strip()}
    args.sizes = [int(x) for x in str(args.keys).split(",")]
    return args


# ------------------------------------------------------------------------ a, b, e: live
class CountingProxy(FaultProxy):
    """A FaultProxy that also counts payload bytes per direction and subject class."""

    def __init__(self, *args: Any, subjects: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Most specific prefix first: the digest subject extends the events subject.
        self._classes = sorted(
            ((p.encode(), c) for p, c in subjects.items()), key=lambda item: -len(item[0])
        )
        self.bytes: dict[str, int] = {}
        self.dropped_bytes: dict[str, int] = {}
        #: (perf_counter, class, bytes) of every digest and repair frame, bounded.
        self.timeline: list[tuple[float, str, int]] = []

    def _classify(self, frame: Frame) -> str:
        for prefix, name in self._classes:
            if frame.subject.startswith(prefix):
                return name
        return "inbox_reply" if frame.subject.startswith(b"_INBOX.") else "other"

    def _passes(self, frame: Frame, to_client: bool) -> bool:
        passed = super()._passes(frame, to_client)
        if frame.op in PAYLOAD_OPS:
            direction = "to_b" if to_client else "from_b"
            key = f"{direction}:{self._classify(frame)}"
            if passed:
                self.bytes[key] = self.bytes.get(key, 0) + len(frame.data)
                if not key.endswith(":changes") and len(self.timeline) < 20_000:
                    self.timeline.append((time.perf_counter(), key, len(frame.data)))
            elif self.mode is Mode.DROP and frame.op in DELIVERY_OPS:
                self.dropped_bytes[key] = self.dropped_bytes.get(key, 0) + len(frame.data)
        return passed

    def snapshot(self) -> dict[str, Any]:
        return {
            "bytes": dict(self.bytes),
            "dropped_bytes": dict(self.dropped_bytes),
            "dropped_frames": self.dropped,
            "forwarded_frames": self.forwarded,
        }


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


def run_live(args: argparse.Namespace, ws: Workspace, server: NatsServer) -> dict[str, Any]:
    """Parts a, b and e: one driver run (one signing pass) against two replicating pairs."""
    url = server.url
    lattice = Lattice(server)
    want = args.parts & {"a", "b", "e"}
    a = Provider(ws, lattice, "a", {"NATS_URL": url}).start()
    b = Provider(ws, lattice, "b", {"NATS_URL": url}).start()
    providers = [a, b]
    if "e" in want:
        # A second pair in its own lattice (so with its own replication subjects): the proxy
        # never sits in the path that (a) and (b) measure.
        lattice_e = Lattice(server, prefix="faults", keys=lattice.keys)  # one identity
        base = f"kvcache.faults.{lattice.link_name}"
        proxy = CountingProxy(
            HOST,
            server.port,
            subjects={
                f"{base}.events.digest": "digest",
                f"{base}.events": "changes",
                f"{base}.replay.node.": "node_direct",
                f"{base}.replay": "replay_hello",
            },
        )
        proxy.start()
        ws.track(proxy)
        beat = (
            {} if args.ae_heartbeat is None else {"REPLAY_HEARTBEAT_SECS": str(args.ae_heartbeat)}
        )
        a2 = Provider(ws, lattice_e, "a2", {"NATS_URL": url, **beat}).start()
        b2 = Provider(ws, lattice_e, "b2", {"NATS_URL": proxy.url, **beat}).start()
        providers += [a2, b2]
    for p in providers:
        p.wait_ready()
        p.wait_replicating()

    payloads = {
        "warm": kv_payloads(a, "Set", "warm:{i}", 500),
        "warm_get": kv_payloads(b, "Get", "warm:{i}", 500),
    }
    phases = [
        closed("warmup A", a.rpc, "warm", 16, 5, n=500),
        closed("warmup B", b.rpc, "warm_get", 16, 5, n=500),
    ]
    if "a" in want:
        count = int(args.rate * args.seconds)
        payloads["vis_set"] = kv_payloads(a, "Set", "vis:{i}", count)
        payloads["vis_get"] = kv_payloads(b, "Get", "vis:{i}", count)
        phases.append(
            {
                "name": "visibility",
                "kind": "visibility",
                "set_subject": a.rpc,
                "get_subject": b.rpc,
                "set_payloads": "vis_set",
                "get_payloads": "vis_get",
                "rate": args.rate,
                "duration": args.seconds,
            }
        )
    sink = None
    if "b" in want:
        n = args.writes
        step = max(n // 200, 1)
        payloads |= {
            "tp_set": kv_payloads(a, "Set", "tp:{i}", n),
            "tp_sentinel": kv_payloads(a, "Set", "tp:sentinel{i}", 1),
            "tp_sentinel_get": kv_payloads(b, "Get", "tp:sentinel{i}", 1),
            "tp_sample": kv_payloads(b, "Get", "tp:{i}", n // step, key_step=step),
        }
        sink = start_sink(ws, url, "bench.raw", n, "bench.raw.done")
        raw = {
            "kind": "pubsub",
            "subject": "bench.raw",
            "size": _invocation_size(lattice, a.key),
            "count": n,
            "done_subject": "bench.raw.done",
            "timeout": 30,
        }
        phases += [
            {"name": "raw pubsub #1", **raw},
            closed("tp writes", a.rpc, "tp_set", 64, 60, n=n),
            closed("tp sentinel", a.rpc, "tp_sentinel", 1, 5, n=1),
            sweep("tp sentinel on B", b.rpc, "tp_sentinel_get", 30),
            sweep("tp sample on B", b.rpc, "tp_sample", 10),
            {"name": "raw pubsub #2", **raw},
        ]
    marks: dict[str, Any] = {}
    if "e" in want:
        n = args.ae_keys
        payloads |= {
            "ae_set": kv_payloads(a2, "Set", "ae:{i}", n),
            "ae_get": kv_payloads(b2, "Get", "ae:{i}", n),
        }
        phases += [
            {"name": "drop", "kind": "barrier"},
            closed("ae writes", a2.rpc, "ae_set", 64, 60, n=n),
            {"name": "heal", "kind": "barrier"},
            sweep("ae sweep B", b2.rpc, "ae_get", 40),
        ]

    def on_barrier(name: str) -> None:
        if name == "drop":
            marks["before"] = proxy.snapshot()
            proxy.drop(DROP_PROBABILITY, seed=1, subject_prefix=f"{base}.events")
        elif name == "heal":
            proxy.heal()
            marks["t_heal"] = time.perf_counter()
            marks["at_heal"] = proxy.snapshot()

    spec = driver_spec(url, phases, identity=lattice.driver_identity(), payloads=payloads)
    driven = DriverProcess(ws, spec, on_barrier=on_barrier).run(timeout=240)
    if sink is not None:
        sink.kill()
    by_name = {p["name"]: p for p in driven["phases"]}
    results: dict[str, Any] = {}
    if "a" in want:
        results["a_latency"] = _latency_result(by_name["visibility"])
    if "b" in want:
        results["b_throughput"] = _throughput_result(by_name)
    if "e" in want:
        marks["end"] = proxy.snapshot()
        marks["timeline"] = list(proxy.timeline)
        marks["heartbeat"] = args.ae_heartbeat or "provider default (5 s)"
        results["e_anti_entropy"] = _repair_result(by_name, marks, b2)
    return results


def _invocation_size(lattice: Lattice, provider_key: str) -> int:
    payload = build_payloads(
        lattice.driver_identity(),
        {"provider_key": provider_key, "op": "Set", "key_fmt": "tp:{i}", "count": 1},
    )
    return len(payload[0])


def _latency_result(phase: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": "Set on A; on A's ack, Get on B back to back until found; time from the ack "
        "to the reply of the first successful Get (upper bound, resolution = one "
        "Get RTT to B)",
        "keys": phase["keys"],
        "rate_target": phase["rate_target"],
        "rate_achieved": phase["rate_achieved"],
        "lost": phase["lost"],
        "errors": phase["errors"],
        "visible_after_ack": phase["visible_after_ack"],
        "visible_after_send": phase["visible_after_send"],
        "poll_rtt": phase["poll_rtt"],
        "polls_mean": phase["polls_mean"],
    }


def _throughput_result(by_name: dict[str, Any]) -> dict[str, Any]:
    writes, seen = by_name["tp writes"], by_name["tp sentinel on B"]
    sample = by_name["tp sample on B"]
    keys = writes["requests"] + 1
    applied_seconds = (seen["t_all"] - writes["t_start"]) if seen["complete"] else None
    rate = keys / applied_seconds if applied_seconds else None
    raw_rates = [by_name[n]["msgs_per_sec"] for n in ("raw pubsub #1", "raw pubsub #2")]
    raw_rate = sum(raw_rates) / 2 if all(raw_rates) else None
    return {
        "keys": keys,
        "write_errors": writes["errors"],
        "acked_rps_on_a": writes["rps"],
        "write_latency_on_a": writes["latency"],
        "applied_on_b_seconds": None if applied_seconds is None else round(applied_seconds, 3),
        "applied_on_b_keys_per_sec": None if rate is None else round(rate, 1),
        "b_lag_after_last_ack_ms": None
        if not seen["complete"]
        else round((seen["t_all"] - writes["t_end"]) * 1000, 2),
        "sample_checked": sample["keys"],
        "sample_missing": sample["remaining"],
        "raw_pubsub_msgs_per_sec": raw_rates,
        "raw_pubsub_size_bytes": by_name["raw pubsub #1"]["size"],
        "ratio_vs_raw_pubsub": ratio(rate, raw_rate),
    }


def _repair_result(by_name: dict[str, Any], marks: dict[str, Any], b2: Provider) -> dict[str, Any]:
    writes, sweep = by_name["ae writes"], by_name["ae sweep B"]
    t_heal = marks["t_heal"]
    during = _diff(marks["at_heal"]["bytes"], marks["before"]["bytes"])
    after = _diff(marks["end"]["bytes"], marks["at_heal"]["bytes"])
    dropped = _diff(marks["at_heal"]["dropped_bytes"], marks["before"]["dropped_bytes"])
    repair_keys = ("node_direct", "inbox_reply")
    repair_bytes = sum(
        v
        for k, v in {
            **{f"d:{k}": v for k, v in during.items()},
            **{f"h:{k}": v for k, v in after.items()},
        }.items()
        if k.split(":")[-1] in repair_keys
    )
    gaps = [e for e in b2.logs() if e.get("event") == "repair with peer interrupted"]
    after_heal = [(t - t_heal, k, n) for t, k, n in marks["timeline"] if t >= t_heal]
    digests = [round(t, 3) for t, k, _ in after_heal if k.endswith(":digest")]
    repair = [t for t, k, _ in after_heal if not k.endswith(":digest")]
    return {
        "keys": writes["requests"],
        "write_errors": writes["errors"],
        "write_seconds": writes["seconds"],
        "dropped_frames": marks["at_heal"]["dropped_frames"] - marks["before"]["dropped_frames"],
        "dropped_bytes": dropped,
        "complete": sweep["complete"],
        "remaining": sweep["remaining"],
        "missing_at_first_sweep": sweep["missing_at_first_sweep"],
        "ever_missing": sweep["ever_missing"],
        "first_sweep_seconds": sweep["first_sweep_seconds"],
        "all_present_after_heal_s_upper": None
        if sweep["t_all"] is None
        else round(sweep["t_all"] - t_heal, 3),
        "last_missing_after_heal_s": None
        if sweep["t_last_missing"] is None
        else round(sweep["t_last_missing"] - t_heal, 3),
        "all_present_after_first_write_s_upper": None
        if sweep["t_all"] is None
        else round(sweep["t_all"] - writes["t_start"], 3),
        "proxy_bytes_while_dropping": during,
        "proxy_bytes_after_heal": after,
        "repair_bytes_through_proxy": repair_bytes,
        "repair_interrupted_logs_on_b": len(gaps),
        "heartbeat_secs": marks.get("heartbeat"),
        "digest_frames_after_heal_s": digests[:10],
        "repair_frames_after_heal_s": [round(repair[0], 3), round(repair[-1], 3)]
        if repair
        else None,
        "provider_repair_counters": "not exposed over NATS (NatsReplicator.counters is "
        "in-process only)",
    }


# ------------------------------------------------------------------------ c: replay
async def _seeder_main(args: argparse.Namespace) -> None:
    """Fill a store in-process, then serve it with the provider's own replicator."""
    import nats

    from contract.nkeys import KeyPair
    from provider import logs
    from provider.replication import messages as m
    from provider.replication.config import ReplicationConfig
    from provider.replication.natsrepl import NatsReplicator
    from provider.replication.signing import HEADER_BYTES, Trust, seal
    from provider.store import KeyValueStore
    from provider.store.codec import new_node_id

    logs.configure(structured=True, log_level="warning")
    seed = sys.stdin.readline().strip()  # the lattice's cluster seed: never on the command line
    trust = Trust.from_host(seed, [KeyPair.from_seed(seed).public_key])
    store = KeyValueStore(node_id=new_node_id())
    for i in range(args.count):
        store.set(f"user:{i}:session", f"{i:032x}")
    config = ReplicationConfig.from_values(
        {"NATS_URL": args.url}, lattice_prefix=args.prefix, link_name=args.link_name
    )
    replicator = NatsReplicator(store, config, trust)
    await replicator.start()
    probe = await nats.connect(args.url, name="kvbench-seeder-probe")
    hello = m.encode(m.Message(m.Kind.SNAPSHOT_HELLO, new_node_id()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ready = it answers a (signed) snapshot hello
        inbox = probe.new_inbox()
        sub = await probe.subscribe(inbox)
        try:
            await probe.publish(config.replay_subject, seal(trust, hello, inbox), reply=inbox)
            reply = await sub.next_msg(timeout=0.5)
            if m.decode(reply.data[HEADER_BYTES:]).keys == args.count:
                break
        except Exception:
            await asyncio.sleep(0.05)
        finally:
            await sub.unsubscribe()
    await probe.close()
    print("ready", flush=True)
    await asyncio.Event().wait()


def run_replay(args: argparse.Namespace, ws: Workspace, server: NatsServer) -> dict[str, Any]:
    runs = []
    for size in args.sizes:
        prefix = f"replay{size}"
        lattice = Lattice(server, prefix=prefix)
        t0 = time.monotonic()
        seeder = ws.spawn(
            [
                __file__,
                "--role",
                "seeder",
                "--url",
                server.url,
                "--prefix",
                prefix,
                "--link-name",
                lattice.link_name,
                "--count",
                str(size),
            ],
            f"seeder{size}",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert seeder.stdin is not None and seeder.stdout is not None
        seeder.stdin.write(lattice.keys.cluster.seed.encode() + b"\n")
        seeder.stdin.flush()
        if seeder.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"seeder failed:\n{ws.log_tail(f'seeder{size}')}")
        seed_seconds = time.monotonic() - t0
        timeout = 30 + size / 5000
        a = Provider(ws, lattice, f"replay{size}-a", {"NATS_URL": server.url}).start()
        a_event = a.wait_log("replay complete", timeout)
        seeder.kill()
        seeder.wait()
        b = Provider(ws, lattice, f"replay{size}-b", {"NATS_URL": server.url}).start()
        b_event = b.wait_log("replay complete", timeout)
        run = {
            "keys": size,
            "seeder_ready_seconds": round(seed_seconds, 2),
            "a_from_seeder": _replay_figures(a, a_event),
            "b_from_a": _replay_figures(b, b_event),
        }
        runs.append(run)
        a.kill()
        b.kill()
    rates = [r["b_from_a"]["keys_per_sec"] for r in runs]
    return {
        "method": "seeder (in-process store + provider NatsReplicator) -> provider A replays; "
        "seeder killed; provider B replays from A. keys/s = keys / the provider's "
        "own replay seconds; end_to_end includes process start-up",
        "runs": runs,
        "goal": f">= {GOAL_REPLAY_KEYS_PER_SEC} keys/s, flat as the key count grows",
        "goal_met": all(r >= GOAL_REPLAY_KEYS_PER_SEC for r in rates),
        "rate_ratio_largest_vs_smallest": ratio(rates[-1], rates[0]) if len(rates) > 1 else None,
    }


def _replay_figures(p: Provider, event: dict[str, Any]) -> dict[str, Any]:
    keys, seconds = event["keys"], event["seconds"]
    end_to_end = log_time(event) - (p.started_wall or 0)
    return {
        "keys": keys,
        "replay_seconds": seconds,
        "keys_per_sec": round(keys / seconds) if seconds else None,
        "end_to_end_seconds": round(end_to_end, 3),
        "end_to_end_keys_per_sec": round(keys / end_to_end) if end_to_end > 0 else None,
    }


# ------------------------------------------------------------------------ d: memory
def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_main(args: argparse.Namespace) -> None:
    import tracemalloc

    from provider.store import KeyValueStore

    n = args.count
    keys = values = None
    if args.prebuilt:
        keys = [MEMORY_KEY_FMT.format(i=i) for i in range(n)]
        values = [f"{i:032x}" for i in range(n)]
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start()
    rss0 = _rss()
    started = time.perf_counter()
    if args.mode == "dict":
        container: Any = {}
        if keys is not None and values is not None:
            for key, value in zip(keys, values, strict=True):
                container[key] = value
        else:
            for i in range(n):
                container[MEMORY_KEY_FMT.format(i=i)] = f"{i:032x}"
    else:
        container = KeyValueStore(node_id=uuid.uuid4().hex[:16])
        if args.mode == "digests":
            container.track_digests()
        if keys is not None and values is not None:
            for key, value in zip(keys, values, strict=True):
                container.set(key, value)
        else:
            for i in range(n):
                container.set(MEMORY_KEY_FMT.format(i=i), f"{i:032x}")
    seconds = time.perf_counter() - started
    gc.collect()
    out = {
        "mode": args.mode,
        "keys": n,
        "prebuilt": args.prebuilt,
        "rss_bytes_per_key": round((_rss() - rss0) / n, 1),
        "us_per_insert": round(seconds / n * 1e6, 3),
    }
    if args.tracemalloc:
        out["traced_bytes_per_key"] = round(tracemalloc.get_traced_memory()[0] / n, 1)
        del out["us_per_insert"], out["rss_bytes_per_key"]  # tracemalloc distorts both
    print(json.dumps(out), flush=True)
    os._exit(0)  # skip freeing a million objects


def run_memory(args: argparse.Namespace, ws: Workspace) -> dict[str, Any]:
    def measure(mode: str, count: int, *extra: str) -> dict[str, Any]:
        name = f"memory-{mode}{''.join(extra)}"
        proc = ws.spawn(
            [__file__, "--role", "memory", "--mode", mode, "--count", str(count), *extra],
            name,
            stdout=subprocess.PIPE,
        )
        out, _ = proc.communicate(timeout=120)
        if proc.returncode:
            raise RuntimeError(f"memory probe failed:\n{ws.log_tail(name)}")
        return json.loads(out)

    n = args.memory_keys
    small = max(n // 10, min(n, 100_000))  # RSS deltas of a few pages would be noise
    rows = {
        "dict": measure("dict", n),
        "store": measure("store", n),
        "store_digests": measure("digests", n),
        "dict_prebuilt": measure("dict", small, "--prebuilt"),
        "store_prebuilt": measure("store", small, "--prebuilt"),
        "dict_traced": measure("dict", small, "--tracemalloc"),
        "store_traced": measure("store", small, "--tracemalloc"),
    }
    rss = {k: v.get("rss_bytes_per_key") for k, v in rows.items()}
    store_ratio = ratio(rss["store"], rss["dict"])
    digests_ratio = ratio(rss["store_digests"], rss["dict"])
    return {
        "keys": n,
        "small_keys": small,
        "method": "RSS delta per key in a fresh interpreter; strings built inside the "
        "measurement unless 'prebuilt' (then: container overhead only)",
        "variants": rows,
        "store_vs_dict_rss": store_ratio,
        "store_digests_vs_dict_rss": digests_ratio,
        "overhead_only_store_vs_dict_rss": ratio(rss["store_prebuilt"], rss["dict_prebuilt"]),
        "store_vs_dict_tracemalloc": ratio(
            rows["store_traced"]["traced_bytes_per_key"],
            rows["dict_traced"]["traced_bytes_per_key"],
        ),
        "insert_us_ratio_store_vs_dict": ratio(
            rows["store"]["us_per_insert"], rows["dict"]["us_per_insert"]
        ),
        "goal": f"<= {GOAL_MEMORY_RATIO}x dict (strings included)",
        "goal_met": (store_ratio or 99) <= GOAL_MEMORY_RATIO
        and (digests_ratio or 99) <= GOAL_MEMORY_RATIO,
    }


# ------------------------------------------------------------------------ report
def report(results: dict[str, Any]) -> None:
    if "a_latency" in results:
        r = results["a_latency"]
        rows = [
            [
                name,
                r[key].get("p50_ms"),
                r[key].get("p90_ms"),
                r[key].get("p99_ms"),
                r[key].get("max_ms"),
            ]
            for name, key in (
                ("A ack -> visible on B", "visible_after_ack"),
                ("Set sent -> visible on B", "visible_after_send"),
                ("baseline: one Get RTT to B", "poll_rtt"),
            )
        ]
        print_table(
            f"(a) replication latency at {fmt(r['rate_achieved'])} writes/s "
            f"({r['keys']} keys, {r['lost']} lost, {r['polls_mean']} polls/key)",
            ["", "p50 ms", "p90 ms", "p99 ms", "max ms"],
            rows,
        )
    if "b_throughput" in results:
        r = results["b_throughput"]
        print_table(
            f"(b) sustained replicated writes ({r['keys']} Sets, 64 in flight)",
            ["", "per second"],
            [
                ["Sets acked by A", r["acked_rps_on_a"]],
                ["keys applied on B", r["applied_on_b_keys_per_sec"]],
                *[
                    [f"raw nats-py pub->sub ({r['raw_pubsub_size_bytes']} B) #{i + 1}", v]
                    for i, v in enumerate(r["raw_pubsub_msgs_per_sec"])
                ],
            ],
        )
        print(
            f"  ratio applied-on-B / raw pub-sub = {fmt(r['ratio_vs_raw_pubsub'])}; "
            f"B lag after A's last ack {fmt(r['b_lag_after_last_ack_ms'])} ms; "
            f"sample missing on B {r['sample_missing']}/{r['sample_checked']}"
        )
    if "c_replay" in results:
        r = results["c_replay"]
        rows = []
        for run in r["runs"]:
            for who in ("a_from_seeder", "b_from_a"):
                f = run[who]
                rows.append(
                    [
                        f"{run['keys']:,} keys, {who}",
                        f["replay_seconds"],
                        f["keys_per_sec"],
                        f["end_to_end_seconds"],
                        f["end_to_end_keys_per_sec"],
                    ]
                )
        print_table(
            "(c) snapshot replay",
            ["joiner", "replay s", "keys/s", "spawn->done s", "keys/s e2e"],
            rows,
        )
        print(
            f"  goal {r['goal']}: {'met' if r['goal_met'] else 'NOT met'}; "
            f"rate largest/smallest = {fmt(r['rate_ratio_largest_vs_smallest'])}"
        )
    if "d_memory" in results:
        r = results["d_memory"]
        v = r["variants"]
        print_table(
            f"(d) memory per key ({r['keys']:,} keys; prebuilt and traced at {r['small_keys']:,})",
            ["variant", "RSS B/key", "traced B/key", "us/insert"],
            [
                [
                    k,
                    x.get("rss_bytes_per_key"),
                    x.get("traced_bytes_per_key"),
                    x.get("us_per_insert"),
                ]
                for k, x in v.items()
            ],
        )
        print(
            f"  store/dict = {fmt(r['store_vs_dict_rss'])} (digests "
            f"{fmt(r['store_digests_vs_dict_rss'])}, overhead only "
            f"{fmt(r['overhead_only_store_vs_dict_rss'])}, tracemalloc "
            f"{fmt(r['store_vs_dict_tracemalloc'])}); goal {r['goal']}: "
            f"{'met' if r['goal_met'] else 'NOT met'}"
        )
    if "e_anti_entropy" in results:
        r = results["e_anti_entropy"]
        print_table(
            f"(e) anti-entropy after {DROP_PROBABILITY:.0%} delivery loss on B "
            f"({r['keys']:,} keys)",
            ["", "value"],
            [
                ["frames dropped", r["dropped_frames"]],
                ["keys missing on B at first sweep", r["missing_at_first_sweep"]],
                ["first sweep took (s)", r["first_sweep_seconds"]],
                ["all keys on B, s after heal (upper bound)", r["all_present_after_heal_s_upper"]],
                ["last key seen missing, s after heal", r["last_missing_after_heal_s"]],
                ["repair bytes via B's proxy", r["repair_bytes_through_proxy"]],
                [
                    "change bytes dropped",
                    sum(v for k, v in r["dropped_bytes"].items() if k.endswith("changes")),
                ],
                ["heartbeat", r["heartbeat_secs"]],
                [
                    "digest frames after heal at (s)",
                    " ".join(map(fmt, r["digest_frames_after_heal_s"])) or "none",
                ],
                [
                    "repair frames after heal, first..last (s)",
                    " .. ".join(map(fmt, r["repair_frames_after_heal_s"] or [])) or "none",
                ],
            ],
        )


def main() -> int:
    args = parse_args()
    if args.role == "seeder":
        run_async(_seeder_main(args))
        return 0
    if args.role == "memory":
        _memory_main(args)
        return 0
    started = time.monotonic()
    check_clock()
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    with Workspace("replication") as ws:
        server = ws.start_nats() if args.parts & {"a", "b", "c", "e"} else None
        mark = time.monotonic()
        if args.parts & {"a", "b", "e"}:
            results |= run_live(args, ws, server)
            seconds["a,b,e"], mark = round(time.monotonic() - mark, 1), time.monotonic()
        if "c" in args.parts:
            results["c_replay"] = run_replay(args, ws, server)
            seconds["c"], mark = round(time.monotonic() - mark, 1), time.monotonic()
        if "d" in args.parts:
            results["d_memory"] = run_memory(args, ws)
            seconds["d"] = round(time.monotonic() - mark, 1)
    results["part_seconds"] = seconds
    report(results)
    name = (
        "replication" if args.parts >= ALL_PARTS else f"replication-{''.join(sorted(args.parts))}"
    )
    return finish(name, results, quick=args.quick, started=started)


if __name__ == "__main__":
    sys.exit(main())
