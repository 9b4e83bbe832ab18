"""``nats-kvcache dev``: a self-contained dev lattice in the foreground (what ``make run`` runs).

Starts a hub nats-server and N instances, each a provider beside its own leaf nats-server, as
hosts run them (see :mod:`provider.cli.lattice`); writes the state file ``call`` reads; prints
commands to try (with the path of the running executable, so they can be pasted as they are),
then a compact status, one line per instance, until Ctrl-C/SIGTERM, when every provider gets a
real shutdown request before the servers are stopped (also on SIGHUP: a closed terminal
leaves no servers behind). On a terminal the status is redrawn in
place under the commands; otherwise it is printed only when it changes.

An instance that dies is shown down and the others keep serving, so failover can be watched; as
with docker compose, it is not restarted unless ``--restart on-failure`` says so (then up to
``MAX_RESTARTS`` times). While ``dev`` runs, ``nats-kvcache instance ls|kill|stop|restart|add``
(:mod:`provider.cli.instance`) changes the lattice through a Unix socket in a private
directory (named in the state file, mode 0600): only the user who started ``dev`` can use it.
The hub dying ends the lattice. With ``$NATS_KVCACHE_METRICS_ADDR=host:port`` instance i
serves metrics on port + i.

Exit codes: 0 after a requested stop, 1 when the lattice could not start, the hub nats-server
died or a provider did not shut down cleanly, 2 bad settings, 130 when interrupted during
start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from provider.cli import state as statefile
from provider.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    error,
    parse_int,
    program,
)
from provider.cli.lattice import (
    METRICS_ENV,
    DevLattice,
    HealthReport,
    Instance,
    Interrupted,
    LatticeError,
    log_tail,
    metrics_url,
)
from provider.cli.status import collect_statuses
from provider.observe.status import InstanceStatus

STATUS_INTERVAL = 5.0
MAX_RESTARTS = 5
RESTART_POLICIES = ("no", "on-failure")
#: A control request larger than this is refused (they are a few dozen bytes).
MAX_CONTROL_REQUEST = 4096

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
    value = parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _port(text: str) -> int:
    value = parse_int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 0..65535 (0 = a free port)")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "dev",
        help="run nats-server and provider instances locally until Ctrl-C",
        description="Start a dev lattice: a hub nats-server (JetStream) and N instances, each a"
        " provider beside its own leaf nats-server, as hosts run them. An instance that dies is"
        " shown down while the others keep serving.",
        epilog="While it runs, from another terminal: `nats-kvcache instance ls`,"
        " `instance kill N` (SIGKILL, to watch failover), `instance stop N`, `instance restart N`"
        " (the instance replays the others' state), `instance add`; `nats-kvcache call"
        f" --instance N ...` talks to instance N only. With ${METRICS_ENV}=host:port, instance"
        " i serves /metrics on port + i.",
    )
    parser.add_argument("--instances", type=_positive, default=1, metavar="N", help="default 1")
    parser.add_argument(
        "--port", type=_port, default=0, metavar="P", help="hub client port (default: a free port)"
    )
    parser.add_argument(
        "--state",
        help=f"state file (default ${statefile.STATE_ENV} or {statefile.DEFAULT_STATE_PATH}); "
        "logs go next to it (an earlier run's are removed)",
    )
    parser.add_argument(
        "--restart",
        choices=RESTART_POLICIES,
        default="no",
        help="what to do when an instance dies: 'no' (default) leaves it down until"
        f" `instance restart N`; 'on-failure' starts it again, up to {MAX_RESTARTS} times",
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
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: terminal closed
        loop.add_signal_handler(signum, stop.set)
    display = StatusDisplay(sys.stdout)
    custom_state = path != statefile.DEFAULT_STATE_PATH
    session = Session(lattice, path, display, stop, args.restart, explicit_state=custom_state)
    wrote_state = False
    code = EXIT_OK
    try:
        print(f"starting nats-server on {lattice.nats_url} ...", flush=True)
        await lattice.start(stop)
        await session.open_control()
        session.save()
        wrote_state = True
        print(_banner(lattice, path, explicit_state=custom_state, tty=display.tty), flush=True)
        code = await session.monitor()
    except Interrupted:
        code = EXIT_INTERRUPTED
    except LatticeError as failure:
        display.interrupt()
        error("dev", failure)
        code = EXIT_FAILED
    finally:
        await session.close()
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
        f"dev lattice ready: hub nats-server {lattice.nats_url}, {n} provider instance(s)",
        f"  provider  {lattice.provider.public_key} (link name 'default', lattice 'default')",
        f"  actor     {lattice.actor.public_key} (linked)",
        f"  state     {path} (holds the throwaway cluster seed, mode 0600)",
        "instances (each a provider beside its own leaf nats-server, as on a host):",
        *(f"  #{i.index:<3} {i.nats_url:<24} log {i.log_path}" for i in lattice.instances),
        f"  hub log {lattice.nats_log}; leaf logs leaf-N.log next to it",
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
    last = n - 1
    lines += [
        "one instance at a time (set on one, read on another; kill one and watch the others):",
        f"  {cli} call --instance 0 set city paris{state_flag}",
        f"  {cli} call --instance {last} get city{state_flag}",
        f"  {cli} instance kill {last}{state_flag}     # or stop / restart {last}; ls; add",
    ]
    if n > 1:
        lines.append(
            "note: without --instance a call reaches any one instance; they agree only through"
            " replication"
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


def instance_line(instance: Instance, doc: InstanceStatus | None, fallback: str) -> str:
    """One compact line: pid, leaf port, health, entries, peers, calls, errors, p99, metrics."""
    proc = instance.proc
    pid = proc.pid if proc else "-"
    head = f"  #{instance.index:<2} pid {pid!s:<7} :{instance.leaf_port:<5}"
    state = instance.state
    if state != "running":
        why = instance.down or ""
        code = proc.returncode if proc is not None else None
        if state == "down" and not why and code is not None:
            why = f"exited({code})"
        return f"{head} {state.upper()}{f' ({why})' if why else ''}"
    parts = [head]
    if doc is None:
        parts.append(fallback)
    else:
        parts += [
            f"{'healthy' if doc.healthy else 'UNHEALTHY':<9}",
            f"keys {doc.entries:<5}",
            f"peers {len(doc.replication.peers):<2}",
            f"calls {doc.calls:<5}",
            f"err {doc.errors:<4}",
            f"p99 {doc.worst_p99_ms:.1f}ms",
        ]
    if instance.restarts:
        parts.append(f"restarted {instance.restarts}x")
    if instance.metrics_addr:
        parts.append(f"metrics :{instance.metrics_addr.rpartition(':')[2]}")
    return " ".join(parts)


def render_status(
    lattice: DevLattice, report: HealthReport, docs: list[InstanceStatus] | None = None
) -> tuple[str, list[str]]:
    """``(header, lines)``: one header and one line per instance, then any health messages."""
    live = len(lattice.live_instances())
    label = _health_label(report, live)
    nats_pid = lattice.hub.pid or "-"
    by_id = {d.instance: d for d in docs or []}
    down = sum(1 for i in lattice.instances if i.state == "down")
    healthy = min(report.healthy, live)  # one may have died while the probe was out
    header = f"nats-server pid {nats_pid} | {healthy} of {live} running instance(s) healthy"
    if down:
        header += f" | {down} down"
    lines = [instance_line(i, by_id.get(i.instance_id), label) for i in lattice.instances]
    lines.extend(f"  unhealthy: {message}" for message in report.messages)
    for doc in docs or []:
        if doc.message:
            lines.append(f"  {doc.instance[:8]}: {doc.message}")
    return header, lines


class Session:
    """The running lattice's supervision: the status loop, automatic restarts (``--restart
    on-failure``) and the control socket of ``nats-kvcache instance``. Every change is written
    to the state file at once, so ``call --instance`` and ``instance ls`` see it."""

    def __init__(
        self,
        lattice: DevLattice,
        path: Path,
        display: StatusDisplay,
        stop: asyncio.Event,
        policy: str = "no",
        *,
        explicit_state: bool = False,
    ) -> None:
        self.lattice = lattice
        self.path = path
        self.display = display
        self.stop = stop
        self.policy = policy
        self.state_flag = f" --state {shlex.quote(str(path))}" if explicit_state else ""
        self.refresh = asyncio.Event()  # set: draw the status now, not at the next interval
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.AbstractServer | None = None
        self._lock = asyncio.Lock()  # one change of the lattice at a time

    # ------------------------------------------------------------------ output
    def save(self) -> None:
        statefile.save(self.path, self.lattice.state())
        self.refresh.set()

    def say(self, text: str) -> None:
        self.display.interrupt()
        print(text, flush=True)

    def complain(self, text: str) -> None:
        self.display.interrupt()
        error("dev", text)

    # ------------------------------------------------------------------ control socket
    async def open_control(self) -> None:
        sock = self.lattice.control_path
        self._server = await asyncio.start_unix_server(self._serve, path=str(sock))
        os.chmod(sock, 0o600)  # and its directory is 0700: only this user may connect

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One JSON request line in, one JSON answer line out."""
        try:
            line = await asyncio.wait_for(reader.readline(), timeout=5)
            if len(line) > MAX_CONTROL_REQUEST:
                answer = {"ok": False, "error": "request too large"}
            else:
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("not an object")
                except ValueError:
                    answer = {"ok": False, "error": "malformed request"}
                else:
                    answer = await self.control(request)
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """``ls``, ``add``, and ``kill``/``stop``/``restart`` of one ``index``."""
        op = request.get("op")
        lattice = self.lattice
        if op == "ls":
            return {"ok": True, "instances": lattice.state().instances}
        if op not in ("add", "kill", "stop", "restart"):
            return {"ok": False, "error": f"unknown operation {op!r}"}
        async with self._lock:
            try:
                if op == "add":
                    instance = lattice.add_instance()
                    self.say(f"adding instance {instance.index} ...")
                    self.save()  # shown as starting while it starts
                    await lattice.start_added(instance, self.stop)
                    message = (
                        f"instance {instance.index} added (pid {instance.proc_pid},"
                        f" {instance.nats_url}); healthy after replaying its peers' state"
                    )
                else:
                    index = request.get("index")
                    if not isinstance(index, int) or isinstance(index, bool):
                        return {"ok": False, "error": "an instance index is required"}
                    instance = lattice.instance(index)
                    message = await self._change(op, instance)
            except LatticeError as failure:
                self.save()
                self.complain(str(failure))
                return {"ok": False, "error": str(failure).splitlines()[0]}
            self.save()
            self.say(message)
            return {"ok": True, "message": message, "instance": _entry(lattice, instance)}

    async def _change(self, op: str, instance: Instance) -> str:
        lattice = self.lattice
        cli = program()
        restart_hint = f"`{cli} instance restart {instance.index}{self.state_flag}`"
        if op == "kill":
            pid = instance.proc_pid
            await lattice.kill(instance)
            return (
                f"instance {instance.index} killed (pid {pid}, SIGKILL);"
                f" start it again with {restart_hint}"
            )
        if op == "stop":
            problem = await lattice.stop_instance(instance)
            if problem:
                raise LatticeError(problem)
            return f"instance {instance.index} stopped; start it again with {restart_hint}"
        self.say(f"restarting instance {instance.index} ...")
        self.refresh.set()
        await lattice.restart(instance, self.stop)
        return (
            f"instance {instance.index} restarted (pid {instance.proc_pid});"
            " healthy after replaying its peers' state"
        )

    # ------------------------------------------------------------------ watching
    async def monitor(self) -> int:
        """Status every STATUS_INTERVAL seconds (or on a change); watch for dying processes
        twice a second. Returns only when stopped or when the hub died."""
        lattice = self.lattice
        loop = asyncio.get_running_loop()
        next_status = 0.0
        while not self.stop.is_set():
            if lattice.nats_server_exited():
                for report in lattice.exited():
                    self.complain(report)
                return EXIT_FAILED
            for instance in lattice.newly_down():
                self._went_down(instance)
            if self.refresh.is_set() or loop.time() >= next_status:
                self.refresh.clear()
                await self._show_status()
                next_status = loop.time() + STATUS_INTERVAL
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=0.5)
        return EXIT_OK

    def _went_down(self, instance: Instance) -> None:
        what = self.lattice.describe_exit(instance)
        instance.down = self.lattice.down_reason(instance)
        provider_exited = instance.proc is not None and instance.proc.returncode is not None
        log = instance.log_path if provider_exited else instance.leaf_log
        others = len([i for i in self.lattice.instances if i.state == "running"])
        if self.policy == "on-failure" and not instance.held and instance.restarts < MAX_RESTARTS:
            self.complain(
                f"{what}; restarting it ({instance.restarts + 1}/{MAX_RESTARTS}), see {log}"
            )
            task = asyncio.create_task(self._auto_restart(instance))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            why = (
                f"already restarted {MAX_RESTARTS} times; "
                if self.policy == "on-failure" and not instance.held
                else ""
            )
            self.complain(
                f"{what}; {others} other instance(s) keep serving. {why}Start it again with"
                f" `{program()} instance restart {instance.index}{self.state_flag}`;"
                f" tail of {log}:"
            )
            print(log_tail(log), file=sys.stderr, flush=True)
        self.save()

    async def _auto_restart(self, instance: Instance) -> None:
        async with self._lock:
            try:
                await self.lattice.restart(instance, self.stop)
            except (LatticeError, Interrupted) as failure:
                self.complain(f"restarting instance {instance.index} failed: {failure}")
            else:
                self.say(f"instance {instance.index} restarted (pid {instance.proc_pid})")
            self.save()

    async def _show_status(self) -> None:
        lattice = self.lattice
        report = await lattice.probe_health(window=1.0)
        docs: list[InstanceStatus] = []
        if lattice.nc is not None and lattice.nc.is_connected:
            found = await collect_statuses(lattice.nc, window=0.5)
            docs = [InstanceStatus.from_dict(doc) for doc in found]
        self.display.show(*render_status(lattice, report, docs))


def _entry(lattice: DevLattice, instance: Instance) -> dict[str, Any]:
    """The instance's state file entry (what ``instance`` prints)."""
    return next(e for e in lattice.state().instances if e["index"] == instance.index)
