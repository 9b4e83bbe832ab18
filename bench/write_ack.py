"""WRITE_ACK=peers vs WRITE_ACK=local: what answering a write only after the peers applied it costs.

Issue #10 asks for the cost of read-your-writes to be measured side by side with the opt-out,
in one run, so both modes see the same (noisy) machine:

* two replicating pairs on one nats-server, each in its own lattice (so with its own
  replication subjects): writer + peer with ``WRITE_ACK=peers`` (the default), and writer +
  peer with ``WRITE_ACK=local``. Each peer writes a few keys first, so its writer knows it
  is connected and ``peers`` really waits for it;
* one driver process sends pre-signed ``Set`` invocations to a writer, closed loop, at 1 and
  at 64 in flight. The modes alternate phase by phase, the order flipping every round, and
  the figures are medians over the rounds, so drift and the other tenants of the machine
  fall on both alike;
* baseline for the latency goal: a bare nats-py request/reply round trip (the echo responder
  of ``rpc.py`` returning the same signed bytes) at 1 in flight, in the same run. A write
  with ``peers`` pays one batch out and one ack back on top of the ``local`` path.

Goals (issue #10, item 5): ``peers`` p50 at 1 in flight at most one round trip above
``local`` plus 0.3 ms; ``peers`` throughput at 64 in flight at least 0.8x ``local``'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from orchestra import DriverProcess, Lattice, Provider, Workspace, start_echo
from runtime import check_clock, fill_defaults
from specs import closed, driver_spec, kv_payloads
from stats import finish, fmt, median, print_table, ratio

from wasmbus_testkit import NatsServer

MODES = ("peers", "local")
LEVELS = (1, 64)
KEYS = 1000
GOAL_THROUGHPUT_RATIO = 0.8
GOAL_EXTRA_P50_MS = 0.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (<= ~15 s)")
    parser.add_argument("--rounds", type=int, help="alternations of the two modes")
    parser.add_argument("--seconds", type=float, help="time limit per phase")
    parser.add_argument("--payloads", type=int, help="pre-signed Sets per writer")
    args = parser.parse_args()
    fill_defaults(
        args,
        quick={"rounds": 1, "seconds": 0.5, "payloads": 2000},
        full={"rounds": 5, "seconds": 2.0, "payloads": 8000},
    )
    return args


def start_pairs(
    ws: Workspace, server: NatsServer
) -> tuple[Lattice, dict[str, tuple[Provider, Provider]]]:
    """One writer + peer pair per mode, each pair in its own lattice, one identity for all."""
    lattice = Lattice(server, prefix="ackpeers")
    pairs = {}
    for mode in MODES:
        own = Lattice(server, prefix=f"ack{mode}", keys=lattice.keys)  # the driver signs for both
        values = {"NATS_URL": server.url, "WRITE_ACK": mode}
        writer = Provider(ws, own, f"{mode}-writer", values).start()
        peer = Provider(ws, own, f"{mode}-peer", values).start()
        pairs[mode] = (writer, peer)
    for writer, peer in pairs.values():
        for p in (writer, peer):
            p.wait_ready()
            p.wait_replicating()
    return lattice, pairs


def build_spec(
    args: argparse.Namespace,
    lattice: Lattice,
    echo_subject: str,
    pairs: dict[str, tuple[Provider, Provider]],
) -> dict[str, Any]:
    payloads: dict[str, Any] = {}
    phases = []
    for mode, (writer, peer) in pairs.items():
        payloads[f"set_{mode}"] = kv_payloads(
            writer, "Set", "ack:{i}", args.payloads, key_count=KEYS
        )
        payloads[f"hello_{mode}"] = kv_payloads(peer, "Set", "hello:{i}", 50)
        # The peer's own writes announce it to the writer (a change batch names its sender).
        phases += [
            closed(f"hello {mode}", peer.rpc, f"hello_{mode}", 4, 5, n=50),
            closed(f"warmup {mode}", writer.rpc, f"set_{mode}", 16, max(args.seconds, 1.0)),
        ]
    phases.append(closed("warmup echo", echo_subject, "set_peers", 16, 1.0, n=2000, check="echo"))
    for r in range(args.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        phases.append(closed(f"echo@1 #{r}", echo_subject, "set_peers", 1, 1.0, check="echo"))
        for k in LEVELS:
            for mode in order:
                writer = pairs[mode][0]
                phases.append(
                    closed(f"{mode}@{k} #{r}", writer.rpc, f"set_{mode}", k, args.seconds)
                )
    return driver_spec(
        lattice.server.url, phases, identity=lattice.driver_identity(), payloads=payloads
    )


def analyse(args: argparse.Namespace, phases: list[dict[str, Any]]) -> dict[str, Any]:
    by_name = {p["name"]: p for p in phases}
    rounds = range(args.rounds)

    def figures(prefix: str) -> dict[str, Any]:
        runs = [by_name[f"{prefix} #{r}"] for r in rounds]
        return {
            "rps": round(median([p["rps"] or 0.0 for p in runs]), 1),
            "p50_ms": round(median([p["latency"]["p50_ms"] for p in runs]), 4),
            "p99_ms": round(median([p["latency"]["p99_ms"] for p in runs]), 4),
            "rps_per_round": [p["rps"] for p in runs],
            "p50_ms_per_round": [p["latency"]["p50_ms"] for p in runs],
            "p99_ms_per_round": [p["latency"]["p99_ms"] for p in runs],
            "requests": sum(p["requests"] for p in runs),
            "errors": sum(p["errors"] for p in runs),
        }

    modes = {
        mode: {"inflight": [{"inflight": k, **figures(f"{mode}@{k}")} for k in LEVELS]}
        for mode in MODES
    }
    echo = figures("echo@1")
    at = {mode: {row["inflight"]: row for row in modes[mode]["inflight"]} for mode in MODES}
    peers, local = at["peers"], at["local"]
    extra_p50 = round(peers[1]["p50_ms"] - local[1]["p50_ms"], 4)
    throughput = ratio(peers[64]["rps"], local[64]["rps"])
    budget = round(echo["p50_ms"] + GOAL_EXTRA_P50_MS, 4)
    return {
        "method": "two writer+peer pairs (WRITE_ACK=peers, WRITE_ACK=local), each in its own "
        "lattice on one nats-server; one driver, pre-signed Sets, closed loop at 1 and 64 in "
        f"flight, modes alternating (order flipped each round), medians of {args.rounds} "
        "rounds; baseline: bare nats-py request/reply echo at 1 in flight",
        "modes": modes,
        "echo_round_trip": {"p50_ms": echo["p50_ms"], "p99_ms": echo["p99_ms"]},
        "ratios": {
            f"{key}_at_{k}_ratio": ratio(peers[k][key], local[k][key])
            for k in LEVELS
            for key in ("rps", "p50_ms", "p99_ms")
        },
        "extra_p50_ms_at_1": extra_p50,
        "goals": {
            "throughput": f"peers rps at 64 in flight >= {GOAL_THROUGHPUT_RATIO}x local",
            "throughput_met": throughput is not None and throughput >= GOAL_THROUGHPUT_RATIO,
            "latency": f"peers p50 at 1 in flight <= local p50 + one round trip (echo p50) "
            f"+ {GOAL_EXTRA_P50_MS} ms",
            "latency_budget_ms": budget,
            "latency_met": extra_p50 <= budget,
        },
        "errors": sum(p.get("errors", 0) for p in phases),
    }


def report(results: dict[str, Any]) -> None:
    rows = []
    for k in LEVELS:
        for mode in MODES:
            row = next(r for r in results["modes"][mode]["inflight"] if r["inflight"] == k)
            rows.append(
                [
                    f"WRITE_ACK={mode} @{k}",
                    row["rps"],
                    row["p50_ms"],
                    row["p99_ms"],
                    " ".join(fmt(x) for x in row["rps_per_round"]),
                ]
            )
        ratios = results["ratios"]
        rows.append(
            [
                f"  peers / local @{k}",
                ratios[f"rps_at_{k}_ratio"],
                ratios[f"p50_ms_at_{k}_ratio"],
                ratios[f"p99_ms_at_{k}_ratio"],
                "",
            ]
        )
    echo = results["echo_round_trip"]
    rows.append(["echo round trip @1", "-", echo["p50_ms"], echo["p99_ms"], ""])
    print_table(
        "Replicated Set, WRITE_ACK=peers vs local (medians of alternating rounds)",
        ["", "req/s", "p50 ms", "p99 ms", "req/s per round"],
        rows,
    )
    goals = results["goals"]
    print(
        f"  {goals['throughput']}: {'met' if goals['throughput_met'] else 'NOT met'} "
        f"({fmt(results['ratios']['rps_at_64_ratio'])})"
    )
    print(
        f"  {goals['latency']}: {'met' if goals['latency_met'] else 'NOT met'} "
        f"(+{fmt(results['extra_p50_ms_at_1'])} ms, budget {fmt(goals['latency_budget_ms'])} ms)"
    )
    if results["errors"]:
        print(f"  WARNING: {results['errors']} failed requests (see JSON)")


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    check_clock()
    with Workspace("write_ack") as ws:
        server = ws.start_nats()
        lattice, pairs = start_pairs(ws, server)
        echo_subject = lattice.subjects("VECHO").rpc
        start_echo(ws, server.url, echo_subject)
        spec = build_spec(args, lattice, echo_subject, pairs)
        driven = DriverProcess(ws, spec).run(timeout=300)
    results = analyse(args, driven["phases"])
    results["driver_sign_seconds"] = round(driven["sign_seconds"], 2)
    report(results)
    return finish("write_ack", results, quick=args.quick, started=started)


if __name__ == "__main__":
    sys.exit(main())
