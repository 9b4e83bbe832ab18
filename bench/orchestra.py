"""The orchestrator's side of a benchmark: workspace, lattice, providers, child processes.

Everything runs on loopback. A benchmark script starts a nats-server and provider processes
exactly as a wasmCloud host does, through the test kit (``wasmbus_testkit``: ``NatsServer``,
``ProviderProcess``, HostData from ``build_host_data``), then hands the load to the driver
(:class:`DriverProcess`, ``bench/driver.py``) and the baselines (``bench/baselines.py``),
each in an interpreter of its own. This module does no measuring; it starts, waits and reads
logs. A :class:`Workspace` owns every child and kills them all at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from contract.client import KeyValueClient
from contract.keyvalue import CONTRACT_ID
from contract.wire import HostData, Subjects
from wasmbus_testkit import (
    HostKeys,
    HostStyle,
    KeyPair,
    NatsServer,
    ProviderProcess,
    build_host_data,
    link_definition,
)
from wasmbus_testkit.children import tail

__all__ = [
    "BENCH_DIR",
    "PROVIDER_COMMAND",
    "DriverProcess",
    "Lattice",
    "Provider",
    "Workspace",
    "log_time",
    "start_echo",
    "start_sink",
]

BENCH_DIR = Path(__file__).resolve().parent
#: The provider exactly as a host starts it (the installed package, no arguments).
PROVIDER_COMMAND = [sys.executable, "-m", "provider"]


class Workspace:
    """A temp dir plus every child process started for one benchmark run; kills them all.

    The dir (process logs) is removed after a successful run and kept after a failure.
    """

    def __init__(self, name: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"kvbench-{name}-"))
        self._children: list[Any] = []

    def track(self, child: Any) -> Any:
        """Kill ``child`` (``kill()``, or ``stop()`` for a fault proxy) at :meth:`close`."""
        self._children.append(child)
        return child

    def close(self) -> None:
        for child in reversed(self._children):
            with contextlib.suppress(Exception):
                if isinstance(child, subprocess.Popen):
                    if child.poll() is None:
                        child.kill()
                    child.wait(5)
                else:  # ProviderProcess, NatsServer: kill(); FaultProxy: stop()
                    (getattr(child, "kill", None) or child.stop)()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            print(f"logs kept in {self.dir}", file=sys.stderr)

    def start_nats(self, *, jetstream: bool = False) -> NatsServer:
        server = NatsServer(self.dir / "nats", jetstream=jetstream)
        self.track(server)
        return server.start()

    def spawn(
        self,
        args: Sequence[str],
        name: str,
        *,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = None,
    ) -> subprocess.Popen[bytes]:
        """A child python process (``args`` after the interpreter); stderr goes to a log file."""
        err = open(self.dir / f"{name}.stderr.log", "wb")  # noqa: SIM115 (child keeps it)
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=stdin,
            stdout=stdout,
            stderr=err,
            cwd=BENCH_DIR.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        err.close()
        return self.track(proc)

    def log_tail(self, name: str, max_bytes: int = 3000) -> str:
        return tail(self.dir / f"{name}.stderr.log", max_bytes)


class Lattice:
    """One fake lattice: a prefix, a link name, and the kit's HostKeys for its one cluster
    issuer and its one actor, linked to every provider. Lattices built with the same ``keys``
    share that identity, so one driver signs for all of them."""

    def __init__(
        self,
        server: NatsServer,
        prefix: str = HostStyle.OTP.default_lattice,
        link_name: str = "default",
        *,
        keys: HostKeys | None = None,
    ) -> None:
        self.server = server
        self.prefix = prefix
        self.link_name = link_name
        self.keys = keys or HostKeys()

    def subjects(self, provider_key: str) -> Subjects:
        return Subjects(self.prefix, provider_key, self.link_name)

    def host_data(self, provider: KeyPair, link_values: dict[str, str] | None = None) -> HostData:
        """What the OTP host writes to ``provider``'s stdin (a fresh host key each time)."""
        keys = HostKeys(cluster=self.keys.cluster, actor=self.keys.actor, provider=provider)
        link = link_definition(
            provider.public_key,
            keys.actor.public_key,
            contract_id=CONTRACT_ID,
            link_name=self.link_name,
            values=link_values,
        )
        return build_host_data(
            keys,
            self.server.host_port,
            style=HostStyle.OTP,
            lattice=self.prefix,
            link_name=self.link_name,
            links=[link],
            structured_logging=True,
        )

    def driver_identity(self) -> dict[str, str]:
        """What the driver needs to sign invocations (a throwaway seed, passed over stdin)."""
        return {
            "cluster_seed": self.keys.cluster.seed,
            "actor": self.keys.actor.public_key,
            "prefix": self.prefix,
            "link_name": self.link_name,
        }

    def client(self, nc: Any, provider_key: str, timeout: float = 2.0) -> KeyValueClient:
        """A typed KeyValue client for the lattice's actor (for in-process drivers)."""
        return KeyValueClient(
            nc,
            lattice_prefix=self.prefix,
            provider_key=provider_key,
            link_name=self.link_name,
            signer=self.keys.cluster,
            actor_key=self.keys.actor.public_key,
            timeout=timeout,
        )


class Provider:
    """One provider process (its own provider key, so its RPC subject is its own)."""

    def __init__(
        self, ws: Workspace, lattice: Lattice, name: str, link_values: dict[str, str] | None = None
    ) -> None:
        self.name = name
        provider = KeyPair.generate("service")
        self.key = provider.public_key
        self.subjects = lattice.subjects(self.key)
        self.host_data = lattice.host_data(provider, link_values)
        self.proc = ProviderProcess(
            self.host_data.to_stdin_line(), PROVIDER_COMMAND, log_dir=ws.dir, name=name
        )
        self.started_wall: float | None = None
        ws.track(self.proc)

    @property
    def rpc(self) -> str:
        return self.subjects.rpc

    def start(self) -> Provider:
        self.started_wall = time.time()
        self.proc.start()
        return self

    def kill(self) -> None:
        self.proc.kill()

    def logs(self) -> list[dict[str, Any]]:
        """The structured (JSON) log lines written so far."""
        events = []
        for line in self.proc.stderr_text().splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def wait_log(self, events: str | Sequence[str], timeout: float = 20.0) -> dict[str, Any]:
        """Block until a log line with one of ``events`` appears; return it."""
        wanted = {events} if isinstance(events, str) else set(events)
        deadline = time.monotonic() + timeout
        while True:
            for event in self.logs():
                if event.get("event") in wanted:
                    return event
            if not self.proc.is_running():
                raise RuntimeError(f"{self.name} exited:\n{tail(self.proc.stderr_path, 3000)}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: no {sorted(wanted)} log line within {timeout}s:\n"
                    f"{tail(self.proc.stderr_path, 3000)}"
                )
            time.sleep(0.02)  # timings come from the log lines' own timestamps

    def wait_ready(self, timeout: float = 20.0) -> None:
        self.wait_log("provider ready", timeout)

    def wait_replicating(self, timeout: float = 60.0) -> dict[str, Any]:
        """Until the replica has replayed (or found nobody to replay from)."""
        return self.wait_log(
            ("replay complete", "no peer offered a snapshot; starting from local state"), timeout
        )


def log_time(event: dict[str, Any]) -> float:
    """The wall-clock time (Unix seconds) of a structlog JSON line."""
    return dt.datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


# ------------------------------------------------------------------------------ children
def _start_baseline(ws: Workspace, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
    """``bench/baselines.py`` with ``args``, once it printed ``ready``."""
    proc = ws.spawn([str(BENCH_DIR / "baselines.py"), *args], name, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        raise RuntimeError(f"{name} did not start: {line!r}\n{ws.log_tail(name)}")
    return proc


def start_echo(
    ws: Workspace, url: str, subject: str, name: str = "echo"
) -> subprocess.Popen[bytes]:
    """The echo responder (see :mod:`baselines`), subscribed."""
    return _start_baseline(ws, name, ["echo", "--url", url, "--subject", subject])


def start_sink(
    ws: Workspace, url: str, subject: str, count: int, done: str, name: str = "sink"
) -> subprocess.Popen[bytes]:
    """The counting sink (see :mod:`baselines`), subscribed."""
    args = ["sink", "--url", url, "--subject", subject, "--count", str(count), "--done", done]
    return _start_baseline(ws, name, args)


class DriverProcess:
    """The load driver in its own interpreter; see :mod:`driver` for the protocol."""

    def __init__(
        self,
        ws: Workspace,
        spec: dict[str, Any],
        name: str = "driver",
        on_barrier: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = ws
        self.spec = spec
        self.name = name
        self.on_barrier = on_barrier

    def run(self, timeout: float = 300.0) -> dict[str, Any]:
        """Send the spec, answer barriers, return the result line (raises if there is none)."""
        proc = self.ws.spawn(
            [str(BENCH_DIR / "driver.py")],
            self.name,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(self.spec).encode() + b"\n")
        proc.stdin.flush()
        deadline = time.monotonic() + timeout
        try:
            for raw in proc.stdout:
                message = json.loads(raw)
                if message.get("event") == "barrier":
                    if self.on_barrier is not None:
                        self.on_barrier(message["name"])
                    proc.stdin.write(b"go\n")
                    proc.stdin.flush()
                elif message.get("event") == "result":
                    return dict(message)
                if time.monotonic() > deadline:
                    break
        finally:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        raise RuntimeError(f"driver failed (exit {proc.poll()}):\n{self.ws.log_tail(self.name)}")
