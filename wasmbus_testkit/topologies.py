"""Topologies of several nats-servers: a JetStream cluster, and a hub with leaf nodes.

* :class:`NatsCluster` - N servers fully meshed by explicit routes, forming one JetStream
  cluster (a lattice spread over several machines; tests kill and restart nodes).
* :class:`NatsLeafnodes` - one hub server and N leaf servers connected to it, the shape of a
  wasmCloud lattice whose hosts each run a local leaf node (a provider on one leaf talks to a
  host on another, through the hub). JetStream runs on the hub only, in its own domain; each
  leaf maps the plain JetStream API onto that domain, so a client of any leaf (a provider's
  chunking object store, say) uses the hub's JetStream without knowing about domains.

Start-up waits until the topology is really usable (routes up and a meta leader elected; every
leaf connected), never for a guessed time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from wasmbus_testkit.natsserver import HOST, NatsServer
from wasmbus_testkit.ports import free_port
from wasmbus_testkit.waiting import wait_for_sync

__all__ = ["NatsCluster", "NatsLeafnodes"]


class _ServerGroup(ABC):
    """What every topology does with all of its servers at once: start them (its own way),
    kill or stop them all, and clean up as a context manager even when start-up fails."""

    @property
    @abstractmethod
    def servers(self) -> list[NatsServer]: ...

    @abstractmethod
    def start(self, timeout: float = 30.0) -> Self: ...

    def kill_all(self) -> None:
        for server in self.servers:
            server.kill()

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.kill_all()
            raise

    def __exit__(self, *exc: object) -> None:
        self.kill_all()


class NatsCluster(_ServerGroup):
    """N clustered JetStream servers on loopback, fully meshed by explicit routes."""

    def __init__(self, workdir: Path, size: int = 3, *, name: str = "kvc", **server_kw: Any):
        if size < 1:
            raise ValueError("cluster size must be >= 1")
        self.workdir = Path(workdir)
        self.name = name
        cluster_ports = [free_port() for _ in range(size)]
        self._servers: list[NatsServer] = []
        for i, cport in enumerate(cluster_ports):
            routes = [f"nats-route://{HOST}:{p}" for p in cluster_ports if p != cport]
            self._servers.append(
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
    def servers(self) -> list[NatsServer]:
        return self._servers

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


class NatsLeafnodes(_ServerGroup):
    """A hub nats-server and ``leaves`` leaf servers connected to it, all on loopback.

    ``hub`` and ``leaves`` are ordinary :class:`NatsServer` objects: kill, restart and inspect
    them one by one. Messages published on any server reach subscribers on every other one.

    ``server_kw`` applies to every server, ``hub_options`` to the hub only (its client port,
    say). A lattice whose hosts come and go starts with ``leaves=0`` or a few and calls
    :meth:`add_leaf` for each new host, with that leaf's own options.
    """

    def __init__(
        self,
        workdir: Path,
        leaves: int = 2,
        *,
        name: str = "leafy",
        hub_jetstream: bool = True,
        js_domain: str = "hub",
        hub_options: Mapping[str, Any] | None = None,
        **server_kw: Any,
    ) -> None:
        if leaves < 0:
            raise ValueError("the number of leaves must be >= 0")
        self.workdir = Path(workdir)
        self.name = name
        self._server_kw = server_kw
        hub_kw: dict[str, Any] = {
            "server_name": f"{name}-hub",
            "jetstream": hub_jetstream,
            "jetstream_domain": js_domain if hub_jetstream else None,
            "leaf_port": 0,
            **server_kw,
            **(hub_options or {}),
        }
        self.hub = NatsServer(self.workdir / "hub", **hub_kw)
        self._to_hub = {"$JS.API.>": f"$JS.{js_domain}.API.>"} if hub_jetstream else {}
        self.leaves: list[NatsServer] = []
        for _ in range(leaves):
            self.add_leaf()

    def add_leaf(self, **options: Any) -> NatsServer:
        """One more leaf of the hub (not started: ``start()`` it, then :meth:`wait_connected`).

        ``options`` are :class:`NatsServer` keywords for this leaf alone (``port``,
        ``server_name``, ``log_path`` ...), over the topology's ``server_kw``.
        """
        index = len(self.leaves)
        leaf_kw: dict[str, Any] = {
            "server_name": f"{self.name}-leaf{index}",
            "jetstream": False,
            "leaf_remotes": [self.hub.leaf_url],
            "mappings": self._to_hub,
            **self._server_kw,
            **options,
        }
        leaf = NatsServer(self.workdir / f"leaf{index}", **leaf_kw)
        self.leaves.append(leaf)
        return leaf

    @property
    def servers(self) -> list[NatsServer]:
        """The hub first, then the leaves."""
        return [self.hub, *self.leaves]

    def start(self, timeout: float = 30.0) -> NatsLeafnodes:
        """Start the hub, then every leaf, and wait until each leaf is connected to the hub."""
        self.hub.start(timeout)
        for leaf in self.leaves:
            leaf.start(wait_ready=False)
        self.wait_connected(timeout)
        return self

    def wait_connected(self, timeout: float = 30.0) -> None:
        """Block until the hub counts one leaf connection per running leaf."""
        running = [leaf for leaf in self.leaves if leaf.is_running()]

        def connected() -> bool:
            for server in [self.hub, *running]:
                if not server.is_running():
                    raise RuntimeError(f"{server.server_name} exited:\n{server.log_tail()}")
                if not server.healthy():
                    return False
            return self.hub.http_json("/leafz").get("leafnodes", 0) >= len(running)

        try:
            wait_for_sync(connected, timeout, interval=0.05, message=f"leaves of {self.name}")
        except TimeoutError as exc:
            logs = "\n".join(f"--- {s.server_name} ---\n{s.log_tail(3000)}" for s in self.servers)
            raise TimeoutError(f"{exc}\n{logs}") from exc

    def restart_leaf(self, index: int, timeout: float = 30.0) -> NatsServer:
        """Bring one leaf back (same ports) and wait until it is connected again."""
        leaf = self.leaves[index]
        leaf.restart(wait_ready=False)
        self.wait_connected(timeout)
        return leaf
