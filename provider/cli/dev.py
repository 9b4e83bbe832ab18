"""``nats-kvcache dev``: a self-contained dev lattice in the foreground (what ``make run`` runs).

Starts nats-server and N provider instances (see :mod:`provider.cli.lattice`), writes the state
file ``call`` reads, prints commands to try (with the path of the running executable, so they
can be pasted as they are), then a compact status, one line per instance, until Ctrl-C/SIGTERM,
when every provider gets a real shutdown request before nats-server is stopped. On a terminal the
status is redrawn in place under the commands; otherwise it is printed only when it changes.

A provider instance that dies is started again (up to ``MAX_RESTARTS`` times, unless
``--no-restart``), as a host would; nats-server dying ends the lattice. With
``$NATS_KVCACHE_METRICS_ADDR=host:port`` instance i serves metrics on port + i.

Exit codes: 0 after a requested stop, 1 when the lattice could not start, nats-server died, an
instance kept dying or a provider did not shut down cleanly, 2 bad settings, 130 when
interrupted during start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from provider.cli import state as statefile
from provider.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, error, program
from provider.cli.lattice import (
    METRICS_ENV,
    DevLattice,
    HealthReport,
    Instance,
    Interrupted,
    LatticeError,
    metrics_url,
    tail,
)
from provider.cli.status import collect_statuses

STATUS_INTERVAL = 5.0
MAX_RESTARTS = 5

#: What the banner suggests (the README shows the first three).
TRY_COMMANDS = (
    "set greeting hello --expires 60",
    "get greeting",
    "incr visits 1",
    "list-add todo 'buy milk'",
    "list-range todo 0 -1",
    "set-add colors red",
    "set-query colors",
)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535 (0 = a free port)")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run nats-server and provider instances locally until Ctrl-C",
        description="Start a dev lattice: nats-server (JetStream) and N provider instances.",
        epilog=f"With ${METRICS_ENV}=host:port, instance i serves /metrics on port + i.",
    )
    parser.add_argument("--instances", type=_positive, default=1, metavar="N", help="default 1")
    parser.add_argument("--port", type=_port, default=0, metavar="P", help="default: a free port")
    parser.add_argument(
        "--state",
        help=f"state file (default ${statefile.STATE_ENV} or {statefile.DEFAULT_STATE_PATH}); "
        "logs go next to it",
    )
    parser.add_argument(
        "--no-restart",
        action="store_true",
        help=f"stop the lattice when an instance dies (default: restart it, {MAX_RESTARTS} times)",
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
        f"a dev lattice is already running (nats-server pid {pid}, {path}); stop it with Ctrl-C"
        " in its terminal, or give this one another --state"
        if _pid_alive(pid)
        else None
    )


async def _run(args: argparse.Namespace) -> int:
    path, _ = statefile.resolve_path(args.state)
    busy = _already_running(path)
    if busy:
        error("dev", busy)
        return EXIT_FAILED
    try:
        lattice = DevLattice(path.parent, args.instances, args.port, os.environ.get(METRICS_ENV))
    except LatticeError as failure:
        error("dev", failure)
        return EXIT_USAGE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    display = StatusDisplay(sys.stdout)
    wrote_state = False
    code = EXIT_OK
    try:
        print(f"starting nats-server on {lattice.nats_url} ...", flush=True)
        await lattice.start(stop)
        statefile.save(path, lattice.state())
        wrote_state = True
        custom_state = path != statefile.DEFAULT_STATE_PATH
        print(_banner(lattice, path, explicit_state=custom_state, tty=display.tty), flush=True)
        code = await _monitor(lattice, stop, display, path, restart=not args.no_restart)
    except Interrupted:
        code = EXIT_INTERRUPTED
    except LatticeError as failure:
        display.interrupt()
        error("dev", failure)
        code = EXIT_FAILED
    finally:
        display.interrupt()
        print("stopping: shutting down providers, then nats-server ...", flush=True)
        problems = await lattice.stop()
        if wrote_state:
            statefile.remove(path)
        for problem in problems:
            error("dev", problem)
        if problems and code == EXIT_OK:
            code = EXIT_FAILED
        done = code in (EXIT_OK, EXIT_INTERRUPTED)
        print("stopped" if done else f"stopped (exit code {code})", flush=True)
    return code


def _banner(lattice: DevLattice, path: Path, *, explicit_state: bool, tty: bool = False) -> str:
    state_flag = f" --state {shlex.quote(str(path))}" if explicit_state else ""
    cli = program()
    n = len(lattice.instances)
    lines = [
        f"dev lattice ready: nats-server {lattice.nats_url}, {n} provider instance(s)",
        f"  provider  {lattice.provider.public_key} (link name 'default', lattice 'default')",
        f"  actor     {lattice.actor.public_key} (linked)",
        f"  state     {path} (holds the throwaway cluster seed, mode 0600)",
        "logs:",
        f"  nats-server   {lattice.nats_log}",
        *(f"  provider {i.index:<4} {i.log_path}" for i in lattice.instances),
    ]
    if any(i.metrics_addr for i in lattice.instances):
        lines.append(f"metrics (${METRICS_ENV}, port + instance index):")
        lines.extend(
            f"  provider {i.index:<4} {metrics_url(i.metrics_addr)}"
            for i in lattice.instances
            if i.metrics_addr
        )
    lines.append("try:")
    lines.extend(f"  {cli} call {c}{state_flag}" for c in TRY_COMMANDS)
    lines.append(f"  {cli} status{state_flag}")
    if n > 1:
        lines.append(
            "note: instances share one RPC queue group, so each call reaches one of them; they"
            " agree only through replication (the link's NATS_URL value)"
        )
    how = "updated in place" if tty else "printed when it changes"
    lines.append(f"Ctrl-C stops everything. Status ({how}, checked every {STATUS_INTERVAL:g}s):")
    return "\n".join(lines)


class StatusDisplay:
    """The status block: redrawn in place on a terminal, else printed only when it changes.

    Anything else printed while the block is shown must call :meth:`interrupt` first, so the
    block stays above that text and the next one is drawn below it."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = _isatty(stream) if tty is None else tty
        self._drawn = 0  # lines of the block currently on the terminal
        self._last: list[str] | None = None

    def show(self, header: str, lines: list[str]) -> None:
        """``header`` carries volatile parts (the time); a change in it alone is no change."""
        if self.tty:
            width = max(shutil.get_terminal_size().columns - 1, 20)
            block = [f"[{time.strftime('%H:%M:%S')}] {header}", *lines]
            erase = f"\x1b[{self._drawn}A\r\x1b[J" if self._drawn else ""
            self.stream.write(erase + "".join(f"{line[:width]}\n" for line in block))
            self.stream.flush()
            self._drawn = len(block)
            return
        snapshot = [header, *lines]
        if snapshot == self._last:
            return
        self._last = snapshot
        print(f"[{time.strftime('%H:%M:%S')}] {header}", file=self.stream)
        for line in lines:
            print(line, file=self.stream)
        self.stream.flush()

    def interrupt(self) -> None:
        self._drawn = 0
        self._last = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _health_label(report: HealthReport, live: int) -> str:
    """One label for all live instances: replies on the shared subject are anonymous."""
    if report.healthy >= live:
        return "healthy"
    if report.answered == 0:
        return "no answer"
    if report.unhealthy and not report.healthy:
        return "unhealthy"
    return "mixed"


def instance_line(instance: Instance, doc: dict[str, Any] | None, fallback: str) -> str:
    """One compact line: pid, health, entries, peers, calls, errors, p99, metrics port."""
    proc = instance.proc
    pid = proc.pid if proc else "-"
    if proc is None or proc.poll() is not None:
        code = proc.returncode if proc else "-"
        return f"  #{instance.index:<2} pid {pid!s:<7} exited({code})"
    parts = [f"  #{instance.index:<2} pid {pid!s:<7}"]
    if doc is None:
        parts.append(fallback)
    else:
        ops = (doc.get("operations") or {}).values()
        peers = len((doc.get("replication") or {}).get("peers") or [])
        p99 = max((o.get("p99_ms", 0) for o in ops), default=0)
        parts += [
            f"{'healthy' if doc.get('healthy') else 'UNHEALTHY':<9}",
            f"keys {doc.get('entries', 0):<5}",
            f"peers {peers:<2}",
            f"calls {sum(o.get('calls', 0) for o in ops):<5}",
            f"err {sum(o.get('errors', 0) for o in ops):<4}",
            f"p99 {p99:.1f}ms" if isinstance(p99, int | float) else "p99 -",
        ]
    if instance.restarts:
        parts.append(f"restarted {instance.restarts}x")
    if instance.metrics_addr:
        parts.append(f"metrics :{instance.metrics_addr.rpartition(':')[2]}")
    return " ".join(parts)


def render_status(
    lattice: DevLattice, report: HealthReport, docs: list[dict[str, Any]] | None = None
) -> tuple[str, list[str]]:
    """``(header, lines)``: one header and one line per instance, then any health messages."""
    live = len(lattice.live_instances())
    label = _health_label(report, live)
    nats_pid = lattice.nats_proc.pid if lattice.nats_proc else "-"
    by_id = {str(d.get("instance")): d for d in docs or []}
    header = f"nats-server pid {nats_pid} | {report.healthy} of {live} running instance(s) healthy"
    lines = [instance_line(i, by_id.get(i.instance_id), label) for i in lattice.instances]
    lines.extend(f"  unhealthy: {message}" for message in report.messages)
    for doc in docs or []:
        if doc.get("message"):
            lines.append(f"  {str(doc.get('instance'))[:8]}: {doc['message']}")
    return header, lines


async def _monitor(
    lattice: DevLattice,
    stop: asyncio.Event,
    display: StatusDisplay,
    path: Path,
    *,
    restart: bool = True,
) -> int:
    """Status every STATUS_INTERVAL seconds; watch for dying processes twice a second."""
    loop = asyncio.get_running_loop()
    next_status = 0.0
    while not stop.is_set():
        if lattice.nats_server_exited():
            display.interrupt()
            for report in lattice.exited():
                error("dev", report)
            return EXIT_FAILED
        for instance in lattice.dead_instances():
            display.interrupt()
            what = lattice.describe_exit(instance)
            if not restart or instance.restarts >= MAX_RESTARTS:
                why = "--no-restart" if not restart else f"already restarted {MAX_RESTARTS} times"
                error("dev", f"{what}; not restarted ({why}); tail of {instance.log_path}:")
                print(tail(instance.log_path), file=sys.stderr, flush=True)
                return EXIT_FAILED
            error(
                "dev",
                f"{what}; restarting it ({instance.restarts + 1}/{MAX_RESTARTS}),"
                f" see {instance.log_path}",
            )
            lattice.restart(instance)
            statefile.save(path, lattice.state())
            next_status = 0.0
        if loop.time() >= next_status:
            report = await lattice.probe_health(window=1.0)
            docs: list[dict[str, Any]] = []
            if lattice.nc is not None and lattice.nc.is_connected:
                docs = await collect_statuses(lattice.nc, window=0.5)
            display.show(*render_status(lattice, report, docs))
            next_status = loop.time() + STATUS_INTERVAL
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)
    return EXIT_OK
