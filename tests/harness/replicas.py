"""Several provider instances replicating with each other, each one individually addressable.

All instances of one provider share the RPC queue group, so a plain lattice cannot tell them
apart. Here every :class:`Replica` gets its own lattice prefix (``lat-a``, ``lat-b`` ...) on one
lattice nats-server, so each has its own RPC subject and its own :class:`KeyValueClient`; the
replication settings in its link values (``NATS_URL``, explicit ``STATE_REPL_SUBJECT`` /
``REPLAY_REQ_SUBJECT``) are what make the instances peers of each other.

Processes are launched exactly as a host launches them (``python -m provider``, one HostData
line on stdin, stdin kept open) through a *launcher* with the signature of the
``provider_factory`` fixture, so pytest attaches their logs to failure reports and kills them
at teardown. ``kill()`` is SIGKILL; ``restart()`` starts a fresh process (new node id, empty
store) under the same lattice prefix and link values.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS

from contract.client import KeyValueClient
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair
from contract.wire import HealthCheckResponse, HostData, LinkDefinition, Subjects
from provider.replication.signing import (
    HEADER_BYTES,
    MAC_HEADER_BYTES,
    MAC_MAGIC,
    TAG_ENTRY_BYTES,
    TAG_FIXED_BYTES,
    TAG_MAGIC,
)
from tests.harness.repo import PROVIDER_COMMAND
from wasmbus_testkit import HostKeys, HostStyle, ProviderProcess, build_host_data, link_definition

T = TypeVar("T")

Launcher = Callable[..., ProviderProcess]

#: How long a starting instance may take to answer health as ready (connected and replayed).
READY_TIMEOUT = 20.0
#: Per-call RPC timeout: generous, because tests run hundreds of calls in flight on 2 cores.
CALL_TIMEOUT = 5.0


def envelope_body(data: bytes) -> bytes:
    """The body of a replication envelope of any kind (signed, MAC'd or tagged), unchecked:
    tests read an instance's node id from its own traffic, as any subscriber could."""
    if data.startswith(TAG_MAGIC):
        return data[TAG_FIXED_BYTES + data[TAG_FIXED_BYTES - 1] * TAG_ENTRY_BYTES :]
    if data.startswith(MAC_MAGIC):
        return data[MAC_HEADER_BYTES:]
    return data[HEADER_BYTES:]


def _default_launcher(log_dir: Path) -> Launcher:
    def launch(stdin_line: bytes, cmd: list[str] | None = None, **kw: Any) -> ProviderProcess:
        command = PROVIDER_COMMAND if cmd is None else cmd
        return ProviderProcess(stdin_line, command, log_dir=log_dir, **kw).start()

    return launch


async def gather_limited(coros: Iterable[Awaitable[T]], limit: int = 50) -> list[T]:
    """``asyncio.gather`` with at most ``limit`` awaitables in flight; results in order."""
    semaphore = asyncio.Semaphore(limit)

    async def run(coro: Awaitable[T]) -> T:
        async with semaphore:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


async def wait_converged(
    check: Callable[[], Awaitable[Any] | Any],
    timeout: float = 10.0,
    interval: float = 0.1,
    message: str = "replicas to converge",
) -> Any:
    """Poll ``check`` (sync or async) until it passes; return what it returned.

    ``check`` typically asserts: it passes when it returns without raising, unless it returns
    exactly ``False``. When time runs out an ``AssertionError`` carrying the last failure is
    raised, so the report shows *what* still differed.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                result = await result
            if result is not False:
                return result
            last = AssertionError(f"check returned {result!r}")
        except (AssertionError, Exception) as error:  # not yet
            last = error
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.1f}s waiting for {message}: {last!r}"
            ) from last
        await asyncio.sleep(interval)


class Replica:
    """One provider process under its own lattice prefix, with a client bound to it."""

    def __init__(
        self,
        owner: ReplicaSet,
        name: str,
        *,
        lattice: str,
        values: dict[str, str] | None,
        config_json: str | None,
        link_name: str,
        provider: KeyPair,
        linked: bool,
        log_level: str | None = None,
    ) -> None:
        self.owner = owner
        self.name = name
        self.lattice = lattice
        self.values = dict(values or {})
        self.config_json = config_json
        self.link_name = link_name
        self.provider = provider
        self.linked = linked
        self.log_level = log_level
        self.host = KeyPair.generate("server")
        self.subjects = Subjects(lattice, provider.public_key, link_name)
        self.proc: ProviderProcess | None = None
        self.generation = 0
        self.client = self.client_for(owner.actor)

    # ------------------------------------------------------------------ wiring
    def client_for(self, actor: KeyPair) -> KeyValueClient:
        return KeyValueClient(
            self.owner,  # proxies ``request`` to the set's connection
            lattice_prefix=self.lattice,
            provider_key=self.provider.public_key,
            link_name=self.link_name,
            signer=self.owner.cluster,
            actor_key=actor.public_key,
            timeout=CALL_TIMEOUT,
        )

    def link(self, actor: KeyPair, values: dict[str, str] | None = None) -> LinkDefinition:
        return link_definition(
            self.provider.public_key,
            actor.public_key,
            contract_id=CONTRACT_ID,
            link_name=self.link_name,
            values=self.values if values is None else values,
        )

    def host_data(self) -> HostData:
        """What an OTP host of its own would send this instance (the set's cluster key)."""
        owner = self.owner
        keys = HostKeys(cluster=owner.cluster, host=self.host, provider=self.provider)
        return build_host_data(
            keys,
            owner.lattice_url.removeprefix("nats://"),
            style=HostStyle.OTP,
            lattice=self.lattice,
            link_name=self.link_name,
            links=[self.link(owner.actor)] if self.linked else [],
            config_json=self.config_json,
            log_level=self.log_level,
        )

    # ------------------------------------------------------------------ lifecycle
    def launch(self) -> Replica:
        """Start a fresh process (no readiness wait)."""
        if self.is_running():
            raise RuntimeError(f"replica {self.name} is already running")
        suffix = f"-r{self.generation}" if self.generation else ""
        self.generation += 1
        self.proc = self.owner.launcher(self.host_data().to_stdin_line(), name=self.name + suffix)
        return self

    async def start(self, *, ready: bool = True) -> Replica:
        self.launch()
        if ready:
            await self.wait_ready()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown request, no flush, the store is simply gone."""
        if self.proc is not None:
            self.proc.kill()

    async def restart(self, *, ready: bool = True) -> Replica:
        """Kill (if running) and start a fresh process under the same lattice prefix."""
        self.kill()
        return await self.start(ready=ready)

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.is_running()

    def log_text(self) -> str:
        return self.proc.stderr_text() if self.proc is not None else ""

    async def health(self, timeout: float = 2.0) -> HealthCheckResponse:
        """Ask this instance (only this one: its lattice prefix is its own) how it is."""
        reply = await self.owner.nc.request(
            self.subjects.health, HostStyle.OTP.health_body, timeout=timeout
        )
        return HealthCheckResponse.decode_msgpack(reply.data)

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Healthy with no message: subscribed, replication connected and the replay finished."""

        async def ready() -> bool:
            if not self.is_running():
                raise RuntimeError(f"replica {self.name} exited:\n{self.log_text()[-3000:]}")
            answer = await self.health(timeout=0.5)
            return answer.healthy and answer.message is None

        deadline = time.monotonic() + timeout
        while True:
            try:
                if await ready():
                    return
            except RuntimeError:
                raise
            except Exception:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"replica {self.name} not ready within {timeout:g}s")
            await asyncio.sleep(0.05)

    async def put_link(self, actor: KeyPair, values: dict[str, str]) -> KeyValueClient:
        """Publish a link the way the host does (msgpack on ``linkdefs.put``); wait until it
        is in effect (the actor's calls are accepted) and return a client acting as ``actor``."""
        nc = self.owner.nc
        await nc.publish(self.subjects.link_put, self.link(actor, values).encode_msgpack())
        await nc.flush()
        client = self.client_for(actor)

        async def accepted() -> bool:
            await client.contains("-")  # refused ("unlinked actor") until the link is recorded
            return True

        await wait_converged(accepted, timeout=5, interval=0.05, message="link to take effect")
        return client

    # ------------------------------------------------------------------ reading state
    async def values_of(self, keys: Iterable[str], limit: int = 50) -> dict[str, str | None]:
        """``Get`` of every key: its value, or None when absent."""
        keys = list(keys)
        answers = await gather_limited((self.client.get(k) for k in keys), limit)
        return {k: (a.value if a.exists else None) for k, a in zip(keys, answers, strict=True)}

    def __repr__(self) -> str:
        return f"Replica({self.name!r}, lattice={self.lattice!r})"


class ReplicaSet:
    """Provider instances sharing one provider identity, cluster key and linked actor."""

    def __init__(self, lattice_url: str, log_dir: Path, launcher: Launcher | None = None) -> None:
        self.lattice_url = lattice_url
        self.launcher = launcher or _default_launcher(log_dir)
        self.cluster = KeyPair.generate("cluster")
        self.provider = KeyPair.generate("service")
        self.actor = KeyPair.generate("module")
        self.replicas: list[Replica] = []
        self._nc: NATS | None = None
        self._names = itertools.count()

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("ReplicaSet not connected; use `async with` or connect()")
        return self._nc

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 2.0) -> Any:
        return await self.nc.request(subject, payload, timeout=timeout)

    async def connect(self) -> ReplicaSet:
        if self._nc is None:
            self._nc = await nats.connect(self.lattice_url, name="replica-set", connect_timeout=5)
        return self

    async def close(self) -> None:
        for replica in self.replicas:
            replica.kill()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=2)
            self._nc = None

    async def __aenter__(self) -> ReplicaSet:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def add(
        self,
        name: str | None = None,
        values: dict[str, str] | None = None,
        *,
        lattice: str | None = None,
        config_json: str | None = None,
        link_name: str = "default",
        provider: KeyPair | None = None,
        linked: bool = True,
        log_level: str | None = None,
    ) -> Replica:
        """Declare an instance (not started). ``lattice`` defaults to ``lat-<name>``."""
        name = name or f"r{next(self._names)}"
        replica = Replica(
            self,
            name,
            lattice=lattice or f"lat-{name}",
            values=values,
            config_json=config_json,
            link_name=link_name,
            provider=provider or self.provider,
            linked=linked,
            log_level=log_level,
        )
        self.replicas.append(replica)
        return replica

    async def start(self, *replicas: Replica, ready: bool = True) -> list[Replica]:
        """Launch all at once, then wait until each one is ready."""
        for replica in replicas:
            replica.launch()
        if ready:
            await asyncio.gather(*(r.wait_ready() for r in replicas))
        return list(replicas)

    async def start_many(
        self, names: Iterable[str], values: dict[str, str], *, ready: bool = True
    ) -> list[Replica]:
        """Declare and start one instance per name, all with the same link values."""
        return await self.start(*(self.add(n, values) for n in names), ready=ready)
