"""RPC hot path: the provider answering signed Get/Set vs a bare nats-py echo responder.

One run, one nats-server, one driver process, so every figure has a baseline measured under
the same (noisy) conditions:

* **echo**: a nats-py subscriber in its own process, in the RPC queue group like the provider,
  replying with the request bytes. It receives the very same signed invocation bytes. Its
  throughput is the ceiling set by the driver, nats-py and nats-server on this machine.
* **provider Get / Set**: a standalone provider (no NATS_URL) answering signed invocations:
  decode, claims validation (Ed25519 verify + SHA-256 hash), link checks, store, reply.

Each is driven at 1, 64 and 256 requests in flight after a warm-up; the table gives
requests/s, p50/p99 latency and the provider/echo ratios. Invocations are pre-signed before
any clock starts (signing is the host's cost), cycling over 1000 keys; the provider keeps no
replay cache, so re-sending a signed invocation is legitimate.

**CPU accounting.** Around each of those phases the driver samples the CPU time (utime + stime
from ``/proc/<pid>/stat``) of nats-server, itself, the echo responder, the provider and the
provider's verification worker. Reported per phase: CPU µs per request for each process and in
total, the cores busy, and the rate the machine's cores could sustain at that total CPU cost
per request (``nproc`` / total CPU per request), with the measured rate as a fraction of it.
When the box is saturated, that fraction is ~1 and the best provider/echo ratio the CPU allows
is echo's total CPU per request over the provider's (driver and nats-server share the cores).

Then, at 1 in flight, a **replicated Set** (provider R with NATS_URL linked) against the
standalone **Set**, alternating S, R, S, R... to spread drift evenly: first while R replicates
alone (it publishes every change, nobody receives them), then after a peer P has joined and
applies R's changes (on this machine P shares the two cores with everything else). The goal is
replicated (+1 peer) p50 <= 1.2x standalone p50. ``--write-ack local`` measures it with writes
answered once applied locally; with the default (``peers``) each write also waits for P's ack.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from orchestra import DriverProcess, Lattice, Provider, Workspace, start_echo
from procfs import wait_child
from runtime import check_clock, fill_defaults
from specs import closed, driver_spec
from stats import finish, fmt, median, print_table, ratio

#: Processes whose CPU time is sampled around each load phase (the driver adds itself).
CPU_PROCESSES = ("nats-server", "driver", "echo", "provider", "verify-worker")

KEYS = 1000
STAGES = ("alone", "peer")
GOAL_REPLICATED_RATIO = 1.2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (<= ~10 s)")
    parser.add_argument("--inflight", default="1,64,256", help="comma-separated levels")
    parser.add_argument("--seconds", type=float, help="time limit per phase")
    parser.add_argument("--payloads", type=int, help="pre-signed invocations per op")
    parser.add_argument("--rounds", type=int, help="S/R alternations for the replicated Set")
    parser.add_argument("--repl-seconds", type=float, help="time limit per S/R phase")
    parser.add_argument(
        "--write-ack",
        choices=("peers", "local"),
        default="peers",
        help="WRITE_ACK of the replicated pair (default: the provider's default, peers)",
    )
    args = parser.parse_args()
    args.levels = [int(x) for x in args.inflight.split(",")]
    fill_defaults(
        args,
        quick={"seconds": 0.4, "payloads": 1500, "rounds": 1, "repl_seconds": 0.4},
        full={"seconds": 2.5, "payloads": 20000, "rounds": 3, "repl_seconds": 1.5},
    )
    return args


def build_spec(
    args: argparse.Namespace,
    lattice: Lattice,
    echo_subject: str,
    standalone: Provider,
    replicated: Provider,
    cpu_pids: dict[str, int],
) -> dict[str, Any]:
    secs, repl = args.seconds, args.repl_seconds
    common_keys = {"key_fmt": "bench:{i}", "key_count": KEYS, "value_size": 32}
    s_key, r_key, n = standalone.key, replicated.key, args.payloads
    payloads = {
        "set_s": {**common_keys, "provider_key": s_key, "op": "Set", "count": n},
        "get_s": {**common_keys, "provider_key": s_key, "op": "Get", "count": n},
        "set_r": {**common_keys, "provider_key": r_key, "op": "Set", "count": max(n // 4, 1000)},
    }
    # Warm-up: creates every key (so Gets hit) and warms both sides' code paths.
    phases = [
        closed("warmup set_s", standalone.rpc, "set_s", 16, max(secs, 1.0), n=max(KEYS, 2000)),
        closed("warmup echo", echo_subject, "set_s", 16, secs, n=2000, check="echo"),
        closed("warmup set_r", replicated.rpc, "set_r", 16, secs, n=KEYS),
    ]
    for k in args.levels:
        phases += [
            closed(f"echo@{k}", echo_subject, "set_s", k, secs, check="echo", cpu_pids=cpu_pids),
            closed(f"get@{k}", standalone.rpc, "get_s", k, secs, cpu_pids=cpu_pids),
            closed(f"set@{k}", standalone.rpc, "set_s", k, secs, cpu_pids=cpu_pids),
        ]
    # R first replicates alone (NATS_URL linked, nobody receiving), then with its peer P.
    for stage in STAGES:
        if stage == "peer":
            phases.append({"name": "start peer", "kind": "barrier"})
        for r in range(args.rounds):
            phases += [
                closed(f"standalone/{stage} set@1 #{r}", standalone.rpc, "set_s", 1, repl),
                closed(f"replicated/{stage} set@1 #{r}", replicated.rpc, "set_r", 1, repl),
            ]
    return driver_spec(
        lattice.server.url, phases, identity=lattice.driver_identity(), payloads=payloads
    )


def analyse(args: argparse.Namespace, phases: list[dict[str, Any]]) -> dict[str, Any]:
    by_name = {p["name"]: p for p in phases}
    levels = []
    for k in args.levels:
        echo = by_name[f"echo@{k}"]
        row: dict[str, Any] = {"inflight": k, "echo": _brief(echo)}
        for op in ("get", "set"):
            phase = by_name[f"{op}@{k}"]
            row[op] = _brief(phase)
            row[f"{op}_rps_ratio_vs_echo"] = ratio(phase["rps"], echo["rps"])
            row[f"{op}_p50_ratio_vs_echo"] = ratio(
                phase["latency"].get("p50_ms"), echo["latency"].get("p50_ms")
            )
        levels.append(row)
    cpu = [_cpu_level(k, by_name) for k in args.levels]
    replicated_set: dict[str, Any] = {}
    for stage in STAGES:
        p50 = {
            label: [
                by_name[f"{label}/{stage} set@1 #{r}"]["latency"]["p50_ms"]
                for r in range(args.rounds)
            ]
            for label in ("standalone", "replicated")
        }
        standalone_p50, replicated_p50 = median(p50["standalone"]), median(p50["replicated"])
        replicated_set[stage] = {
            "standalone_p50_ms_per_round": p50["standalone"],
            "replicated_p50_ms_per_round": p50["replicated"],
            "standalone_p50_ms": round(standalone_p50, 4),
            "replicated_p50_ms": round(replicated_p50, 4),
            "ratio": ratio(replicated_p50, standalone_p50),
        }
    headline = replicated_set["peer"]["ratio"]
    replicated_set["goal"] = f"replicated (+1 peer) p50 <= {GOAL_REPLICATED_RATIO}x standalone"
    replicated_set["goal_met"] = headline is not None and headline <= GOAL_REPLICATED_RATIO
    return {
        "levels": levels,
        "cpu": cpu,
        "replicated_set": replicated_set,
        "errors": sum(p.get("errors", 0) for p in phases),
        "phases": phases,
    }


def _cpu_phase(phase: dict[str, Any], cores: int) -> dict[str, Any]:
    """Per-request CPU of one phase and the rate ``cores`` could sustain at that cost."""
    cpu, requests, wall = phase.get("cpu_seconds") or {}, phase["requests"], phase["seconds"]
    per_request = {
        name: round(cpu[name] / requests * 1e6, 2)
        if requests and cpu.get(name) is not None
        else None
        for name in CPU_PROCESSES
    }
    total_seconds = sum(v for v in cpu.values() if v is not None)
    total_us = round(total_seconds / requests * 1e6, 2) if requests else None
    ceiling = round(cores / (total_seconds / requests)) if requests and total_seconds else None
    busy = {name: round(v / wall, 3) for name, v in cpu.items() if v is not None and wall}
    busiest = max(busy, key=busy.__getitem__) if busy else None
    # Whatever else ran on the machine meanwhile (other jobs, idle bench processes, the kernel).
    machine = phase.get("machine_busy_seconds")
    others = None if machine is None or not wall else max(machine - total_seconds, 0.0) / wall
    available = None if others is None else max(cores - others, 0.0)
    avail_ceiling = (
        round(available / (total_seconds / requests))
        if available and requests and total_seconds
        else None
    )
    return {
        "rps": phase["rps"],
        "requests": requests,
        "seconds": wall,
        "cpu_seconds": cpu,
        "cpu_us_per_request": per_request,
        "total_cpu_us_per_request": total_us,
        "cores_busy": round(total_seconds / wall, 3) if wall else None,
        "cores_busy_per_process": busy,
        "busiest_process": busiest,
        "cpu_ceiling_rps": ceiling,
        "measured_vs_ceiling": ratio(phase["rps"], ceiling),
        "machine_cores_busy": round(machine / wall, 3) if machine is not None and wall else None,
        "other_cores_busy": None if others is None else round(others, 3),
        # The same ceiling on the cores the rest of the machine left us:
        "available_cpu_ceiling_rps": avail_ceiling,
        "measured_vs_available_ceiling": ratio(phase["rps"], avail_ceiling),
        "clk_tck": phase.get("clk_tck"),
    }


def _cpu_level(k: int, by_name: dict[str, Any]) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    targets = {op: _cpu_phase(by_name[f"{op}@{k}"], cores) for op in ("echo", "get", "set")}
    echo_total = targets["echo"]["total_cpu_us_per_request"]
    return {
        "inflight": k,
        "cores": cores,
        "targets": targets,
        # If every target ran the cores flat out, provider/echo would be at most this:
        "cpu_bound_ratio_vs_echo": {
            op: ratio(echo_total, targets[op]["total_cpu_us_per_request"]) for op in ("get", "set")
        },
        "measured_ratio_vs_echo": {
            op: ratio(targets[op]["rps"], targets["echo"]["rps"]) for op in ("get", "set")
        },
    }


def _brief(phase: dict[str, Any]) -> dict[str, Any]:
    lat = phase["latency"]
    return {
        "rps": phase["rps"],
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "requests": phase["requests"],
        "errors": phase["errors"],
    }


def report(results: dict[str, Any]) -> None:
    rows = []
    for level in results["levels"]:
        k = level["inflight"]
        echo = level["echo"]
        rows.append([f"echo @{k}", echo["rps"], echo["p50_ms"], echo["p99_ms"], "-", "-"])
        for op in ("get", "set"):
            b = level[op]
            rows.append(
                [
                    f"provider {op.capitalize()} @{k}",
                    b["rps"],
                    b["p50_ms"],
                    b["p99_ms"],
                    level[f"{op}_rps_ratio_vs_echo"],
                    level[f"{op}_p50_ratio_vs_echo"],
                ]
            )
    print_table(
        "RPC hot path (same driver, same run)",
        ["target @in-flight", "req/s", "p50 ms", "p99 ms", "rps / echo", "p50 / echo"],
        rows,
    )
    for level in results["cpu"]:
        if level["inflight"] == 64 or len(results["cpu"]) == 1:
            report_cpu(level)
    rs = results["replicated_set"]
    rows = []
    for stage, label in (("alone", "R alone"), ("peer", "R + 1 peer")):
        r = rs[stage]
        rows.append(
            [
                f"standalone (during '{label}')",
                r["standalone_p50_ms"],
                " ".join(fmt(x) for x in r["standalone_p50_ms_per_round"]),
                "-",
            ]
        )
        rows.append(
            [
                f"replicated, {label}",
                r["replicated_p50_ms"],
                " ".join(fmt(x) for x in r["replicated_p50_ms_per_round"]),
                r["ratio"],
            ]
        )
    print_table(
        "Replicated vs standalone Set, 1 in flight (median of alternating rounds)",
        ["", "p50 ms", "per round", "ratio"],
        rows,
    )
    print(f"  goal {rs['goal']}: {'met' if rs['goal_met'] else 'NOT met'}")
    if results["errors"]:
        print(f"  WARNING: {results['errors']} failed requests (see JSON)")


def report_cpu(level: dict[str, Any]) -> None:
    rows = []
    for op, label in (("echo", "echo"), ("get", "provider Get"), ("set", "provider Set")):
        t = level["targets"][op]
        us, busiest = t["cpu_us_per_request"], t["busiest_process"]
        rows.append(
            [
                label,
                t["rps"],
                *(us[name] for name in CPU_PROCESSES),
                t["total_cpu_us_per_request"],
                t["cores_busy"],
                f"{busiest} {fmt(t['cores_busy_per_process'].get(busiest))}",
                t["other_cores_busy"],
                t["cpu_ceiling_rps"],
                t["measured_vs_ceiling"],
                t["measured_vs_available_ceiling"],
            ]
        )
    cores = level["cores"]
    print_table(
        f"CPU per request @{level['inflight']} in flight (µs; /proc utime+stime, "
        f"{level['targets']['echo']['clk_tck']} ticks/s)",
        [
            "target",
            "req/s",
            "nats",
            "driver",
            "echo",
            "provider",
            "worker",
            "total",
            "ours busy",
            "busiest (cores)",
            "others busy",
            f"{cores}-core ceiling",
            "measured / ceiling",
            "/ free-core ceiling",
        ],
        rows,
    )
    bound, measured = level["cpu_bound_ratio_vs_echo"], level["measured_ratio_vs_echo"]
    print(
        f"  provider/echo if CPU-bound (echo total / provider total): Get {fmt(bound['get'])}, "
        f"Set {fmt(bound['set'])}; measured: Get {fmt(measured['get'])}, "
        f"Set {fmt(measured['set'])}"
    )
    print(
        "  ceiling = cores / total CPU per request; free-core ceiling uses the cores the rest "
        "of the machine left (cores - others busy)"
    )


def main() -> int:
    args = parse_args()
    started = time.monotonic()
    check_clock()
    with Workspace("rpc") as ws:
        server = ws.start_nats()
        lattice = Lattice(server)
        echo_subject = lattice.subjects("VECHO").rpc
        echo = start_echo(ws, server.url, echo_subject)
        standalone = Provider(ws, lattice, "standalone").start()
        replication = {"NATS_URL": server.url, "WRITE_ACK": args.write_ack}
        replicated = Provider(ws, lattice, "replicated", replication).start()
        peer = Provider(ws, lattice, "peer", replication)
        for provider in (standalone, replicated):
            provider.wait_ready()
        replicated.wait_replicating()
        cpu_pids = {
            "nats-server": server.pid,
            "echo": echo.pid,
            "provider": standalone.proc.pid,
            "verify-worker": wait_child(standalone.proc.pid),
        }

        def start_peer(_: str) -> None:
            peer.start().wait_ready()
            peer.wait_replicating()

        spec = build_spec(args, lattice, echo_subject, standalone, replicated, cpu_pids)
        driven = DriverProcess(ws, spec, on_barrier=start_peer).run(timeout=120)
    results = analyse(args, driven["phases"])
    results["driver_sign_seconds"] = round(driven["sign_seconds"], 2)
    results["write_ack"] = args.write_ack
    report(results)
    name = "rpc" if args.write_ack == "peers" else f"rpc-write-ack-{args.write_ack}"
    return finish(name, results, quick=args.quick, started=started)


if __name__ == "__main__":
    sys.exit(main())
