"""``nats-kvcache dev``: a self-contained dev lattice in the foreground (what ``make run`` runs).

Starts nats-server and N provider instances (see :mod:`provider.cli.lattice`), writes the state
file ``call`` reads, prints commands to try, then a short status block every few seconds until
Ctrl-C/SIGTERM, when every provider gets a real shutdown request before nats-server is stopped.

Exit codes: 0 after a requested stop, 1 when the lattice could not start, a process died early
or a provider did not shut down cleanly, 130 when interrupted during start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Any

from provider.cli import state as statefile
from provider.cli.lattice import DevLattice, HealthReport, Interrupted, LatticeError
from provider.cli.status import collect_statuses, render_table

STATUS_INTERVAL = 5.0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run nats-server and provider instances locally until Ctrl-C",
        description="Start a dev lattice: nats-server (JetStream) and N provider instances.",
    )
    parser.add_argument("--instances", type=_positive, default=1, metavar="N", help="default 1")
    parser.add_argument("--port", type=int, default=0, metavar="P", help="default: a free port")
    parser.add_argument(
        "--state",
        help=f"state file (default ${statefile.STATE_ENV} or {statefile.DEFAULT_STATE_PATH}); "
        "logs go next to it",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _already_running(path: Path) -> str | None:
    """Refuse to clobber the state file of a lattice that is still up."""
    try:
        previous = statefile.load(path, required=False)
    except statefile.StateError:
        return None
    pid = previous.nats_server.get("pid")
    return (
        f"a dev lattice is already running (nats-server pid {pid}, {path})"
        if _pid_alive(pid)
        else None
    )


async def _run(args: argparse.Namespace) -> int:
    path, _ = statefile.resolve_path(args.state)
    busy = _already_running(path)
    if busy:
        print(f"nats-kvcache dev: {busy}", flush=True)
        return 1
    lattice = DevLattice(path.parent, args.instances, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    wrote_state = False
    code = 0
    try:
        print(f"starting nats-server on {lattice.nats_url} ...", flush=True)
        await lattice.start(stop)
        statefile.save(path, lattice.state())
        wrote_state = True
        custom_state = path != statefile.DEFAULT_STATE_PATH
        print(_banner(lattice, path, explicit_state=custom_state), flush=True)
        code = await _monitor(lattice, stop)
    except Interrupted:
        code = 130
    except LatticeError as error:
        print(f"nats-kvcache dev: {error}", flush=True)
        code = 1
    finally:
        print("stopping: shutting down providers, then nats-server ...", flush=True)
        problems = await lattice.stop()
        if wrote_state:
            statefile.remove(path)
        for problem in problems:
            print(f"nats-kvcache dev: {problem}", flush=True)
        if problems and code == 0:
            code = 1
        print("stopped" if code in (0, 130) else f"stopped (exit code {code})", flush=True)
    return code


def _banner(lattice: DevLattice, path: Path, *, explicit_state: bool) -> str:
    state_flag = f" --state {shlex.quote(str(path))}" if explicit_state else ""
    try_commands = [
        "set greeting hello --expires 60",
        "get greeting",
        "incr counter 5",
        "list-add todo 'buy milk'",
        "list-range todo 0 -1",
        "set-add colors red",
        "set-query colors",
    ]
    n = len(lattice.instances)
    lines = [
        f"dev lattice ready: nats-server {lattice.nats_url}, {n} provider instance(s)",
        f"  provider  {lattice.provider.public_key} (link name 'default', lattice 'default')",
        f"  actor     {lattice.actor.public_key} (linked)",
        f"  state     {path} (holds the throwaway cluster seed, mode 0600)",
        "logs:",
        f"  nats-server   {lattice.nats_log}",
        *(f"  provider {i.index:<4} {i.log_path}" for i in lattice.instances),
        "try:",
        *(f"  nats-kvcache call {c}{state_flag}" for c in try_commands),
    ]
    if n > 1:
        lines.append(
            "note: instances share one RPC queue group, so each call reaches one of them; they"
            " agree only through replication (the link's NATS_URL value)"
        )
    lines.append(f"status every {STATUS_INTERVAL:g}s; Ctrl-C stops everything")
    return "\n".join(lines)


def _health_label(report: HealthReport, live: int) -> str:
    """One label for all live instances: replies on the shared subject are anonymous."""
    if report.healthy >= live:
        return "healthy"
    if report.answered == 0:
        return "no answer"
    if report.unhealthy and not report.healthy:
        return "unhealthy"
    return "mixed"


def render_status(lattice: DevLattice, report: HealthReport) -> str:
    live = len(lattice.live_instances())
    label = _health_label(report, live)
    nats_pid = lattice.nats_proc.pid if lattice.nats_proc else "-"
    lines = [
        f"[{time.strftime('%H:%M:%S')}] nats-server pid {nats_pid} | "
        f"health: {report.healthy} healthy, {report.unhealthy} unhealthy of {live} running",
        f"  {'inst':<5}{'pid':<9}{'host':<16}{'health':<11}links",
    ]
    for i in lattice.instances:
        running = i.proc is not None and i.proc.poll() is None
        health = label if running else f"exited({i.proc.returncode if i.proc else '-'})"
        host = f"{i.host.public_key[:6]}…{i.host.public_key[-6:]}"
        pid = i.proc.pid if i.proc else "-"
        lines.append(f"  {i.index:<5}{pid!s:<9}{host:<16}{health:<11}{i.links}")
    lines.extend(f"  unhealthy: {message}" for message in report.messages)
    return "\n".join(lines)


async def _monitor(lattice: DevLattice, stop: asyncio.Event) -> int:
    """Status every STATUS_INTERVAL seconds; watch for dying processes twice a second."""
    loop = asyncio.get_running_loop()
    next_status = 0.0
    while not stop.is_set():
        dead = lattice.exited()
        if dead:
            for report in dead:
                print(f"nats-kvcache dev: {report}", flush=True)
            return 1
        if loop.time() >= next_status:
            report = await lattice.probe_health(window=1.0)
            print(render_status(lattice, report), flush=True)
            if lattice.nc is not None and lattice.nc.is_connected:
                statuses = await collect_statuses(lattice.nc, window=0.5)
                if statuses:  # per instance: health, keys, replication peers, last repair check
                    print(render_table(statuses), flush=True)
            next_status = loop.time() + STATUS_INTERVAL
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
    return 0
