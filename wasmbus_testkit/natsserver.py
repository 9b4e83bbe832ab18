"""One real nats-server process on loopback, started, restarted and inspected by tests.

Topologies of several servers (a cluster, a hub with leaf nodes) are built from it in
:mod:`wasmbus_testkit.topologies`.

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
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wasmbus_testkit.children import register_child, tail
from wasmbus_testkit.ports import LOOPBACK, free_port, port_open
from wasmbus_testkit.tools import find_nats_server
from wasmbus_testkit.waiting import wait_for_sync

__all__ = ["HOST", "NatsServer"]

#: Every server listens on loopback only.
HOST = LOOPBACK


def _q(value: str) -> str:
    """Quote a string for the nats-server config format (JSON string syntax is accepted)."""
    return json.dumps(value)


def _block(name: str, entries: Iterable[str]) -> list[str]:
    """A config block: on one line when it holds one setting (``leafnodes { listen: … }``),
    else one setting per line, so a short config stays readable at a glance."""
    items = list(entries)
    if len(items) == 1:
        return [f"{name} {{ {items[0]} }}"]
    return [f"{name} {{", *[f"  {item}" for item in items], "}"]


class NatsServer:
    """One nats-server subprocess bound to 127.0.0.1 (JetStream on unless ``jetstream=False``).

    Ports passed as 0 are picked once, at construction, and then kept for the object's life so
    that ``restart()`` reuses them: clients reconnect to the same URL and cluster peers find the
    node at the route address they were configured with.

    By default everything lives in ``workdir`` (config, JetStream store, log). ``log_path`` and
    ``store_dir`` put the log or the store elsewhere, e.g. the log where a user looks for it and
    the rest in a private directory (``nats-kvcache dev``). ``new_process_group`` starts the
    server in its own process group, so a Ctrl-C in the terminal reaches only the program that
    started it, which can then stop its children in order; ``reap_at_exit=False`` leaves the
    server out of the kit's at-exit SIGKILL, for a program that stops its servers itself.
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
        leaf_port: int | None = None,
        leaf_remotes: Sequence[str] = (),
        jetstream_domain: str | None = None,
        mappings: Mapping[str, str] | None = None,
        no_advertise: bool = True,
        extra_config: str = "",
        debug: bool = False,
        log_path: Path | None = None,
        store_dir: Path | None = None,
        new_process_group: bool = False,
        reap_at_exit: bool = True,
    ) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.jetstream = jetstream
        self.server_name = server_name or f"n{self.port}"
        self.cluster_name = cluster_name
        self.cluster_port = (cluster_port or free_port()) if cluster_name else 0
        self.routes = list(routes)
        # Leaf nodes: ``leaf_port`` (0 = pick one) makes this server a hub accepting leaf
        # connections; ``leaf_remotes`` (``nats-leaf://host:port`` URLs) makes it a leaf.
        self.leaf_port = (leaf_port or free_port()) if leaf_port is not None else 0
        self.leaf_remotes = list(leaf_remotes)
        self.jetstream_domain = jetstream_domain
        #: Subject mappings (``{"$JS.API.>": "$JS.hub.API.>"}`` sends a leaf's JetStream API
        #: calls to the hub's domain).
        self.mappings = dict(mappings or {})
        # Clustered servers normally advertise peers' client URLs to clients. Tests give clients
        # explicit URLs instead, so a client behind a FaultProxy can't silently bypass it.
        self.no_advertise = no_advertise
        self.extra_config = extra_config
        self.debug = debug
        self.store_dir = Path(store_dir) if store_dir else self.workdir / "store"
        self.config_path = self.workdir / "nats.conf"
        self.log_path = Path(log_path) if log_path else self.workdir / "nats-server.log"
        self.new_process_group = new_process_group
        self.reap_at_exit = reap_at_exit
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
    def leaf_url(self) -> str:
        """Where leaf servers connect to this hub (only when started with ``leaf_port``)."""
        if not self.leaf_port:
            raise RuntimeError(f"{self.server_name} accepts no leaf connections")
        return f"nats-leaf://{HOST}:{self.leaf_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{HOST}:{self.monitor_port}"

    # -- lifecycle ---------------------------------------------------------------------------

    def config_text(self) -> str:
        """The nats.conf this server runs with (what :meth:`write_config` writes)."""
        lines = [
            f"server_name: {_q(self.server_name)}",
            f"listen: {_q(f'{HOST}:{self.port}')}",
            f"http: {_q(f'{HOST}:{self.monitor_port}')}",
        ]
        if self.jetstream:
            jetstream = [f"store_dir: {_q(str(self.store_dir))}"]
            if self.jetstream_domain:
                jetstream.append(f"domain: {_q(self.jetstream_domain)}")
            lines += _block("jetstream", jetstream)
        if self.mappings:
            lines += _block("mappings", [f"{_q(k)}: {_q(v)}" for k, v in self.mappings.items()])
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
        if self.leaf_port or self.leaf_remotes:
            leafnodes = [f"listen: {_q(f'{HOST}:{self.leaf_port}')}"] if self.leaf_port else []
            if self.leaf_remotes:
                remotes = ", ".join(f"{{url: {_q(u)}}}" for u in self.leaf_remotes)
                leafnodes.append(f"remotes: [{remotes}]")
            lines += _block("leafnodes", leafnodes)
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def write_config(self) -> Path:
        """Write nats.conf; a file keeps the full setup visible next to the log when debugging."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())
        return self.config_path

    def start(self, timeout: float = 10.0, wait_ready: bool = True) -> NatsServer:
        """Spawn the server and (by default) block until it serves clients and JetStream."""
        if self.is_running():
            return self
        self.write_config()
        cmd = [find_nats_server(), "-c", str(self.config_path)]
        if self.debug:
            cmd.append("-DV")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"=== start {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0 if self.new_process_group else None,
            )
        if self.reap_at_exit:
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

    @property
    def returncode(self) -> int | None:
        """Exit status of the last start (negative: killed by that signal), or None while it
        runs or before it was started; polls, never blocks."""
        return None if self._proc is None else self._proc.poll()

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
