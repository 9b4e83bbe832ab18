"""Shared fixtures: real nats-servers, a fault proxy and provider processes.

Every fixture that starts a process kills it in its teardown (SIGKILL, no grace: a test's
result must not depend on how politely its servers die), and a session-end hook reaps anything
a crashed fixture leaked. When a test fails, the tails of the logs of the processes it used
are attached to its report, because "timed out" alone rarely explains a distributed failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.harness.fakehost import FakeHost
from tests.harness.natsserver import NatsCluster, NatsServer
from tests.harness.processes import ProviderProcess, kill_all_children, tail
from tests.harness.proxy import FaultProxy
from tests.harness.replicas import ReplicaSet

_LOGS = pytest.StashKey[list[tuple[str, Path]]]()


def _attach_log(request: pytest.FixtureRequest, title: str, path: Path) -> None:
    request.node.stash.setdefault(_LOGS, []).append((title, path))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        for title, path in item.stash.get(_LOGS, []):
            report.sections.append((f"log tail: {title} ({path})", tail(path, 4000)))
    return report


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    kill_all_children()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Directory for child-process logs of one test."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


@pytest.fixture
def nats_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    """A fresh single JetStream-enabled nats-server on a random loopback port."""
    server = NatsServer(tmp_path / "nats", jetstream=True)
    _attach_log(request, server.server_name, server.log_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NatsCluster]:
    """A formed 3-node JetStream cluster (meta leader elected, full route mesh)."""
    cluster = NatsCluster(tmp_path / "cluster", size=3)
    for server in cluster.servers:
        _attach_log(request, server.server_name, server.log_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture
def fault_proxy(nats_server: NatsServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``nats_server``; connect clients to ``fault_proxy.url``."""
    proxy = FaultProxy("127.0.0.1", nats_server.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def provider_factory(
    log_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., ProviderProcess]]:
    """Start provider processes: ``provider_factory(stdin_line, cmd=None, **kw)``.

    Every process started through the factory is SIGKILLed at teardown.
    """
    started: list[ProviderProcess] = []

    def start(stdin_line: bytes, cmd: list[str] | None = None, **kw: Any) -> ProviderProcess:
        name = kw.pop("name", f"provider{len(started)}")
        proc = ProviderProcess(stdin_line, cmd, log_dir=log_dir, name=name, **kw)
        started.append(proc)
        _attach_log(request, f"{name} stderr", proc.stderr_path)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


# -- fake wasmCloud host ---------------------------------------------------------------------
#
# ``fake_host`` / ``fake_host_factory`` give each test its own provider process (function
# scope, function event loop). Modules whose tests don't interfere can share one provider with
# the ``module_*`` fixtures: their async fixtures live on the module's event loop, so such a
# module marks its tests ``pytest.mark.asyncio(loop_scope="module")``.


@contextlib.asynccontextmanager
async def _hosts_on(
    server: NatsServer, launch: Callable[..., ProviderProcess]
) -> AsyncIterator[Callable[..., Awaitable[FakeHost]]]:
    """A FakeHost factory on ``server``; every host it made is stopped on exit."""
    hosts: list[FakeHost] = []

    async def make(*, start: bool = True, **options: Any) -> FakeHost:
        host = FakeHost(server, launch, **options)
        hosts.append(host)
        if start:
            await host.start()
        return host

    try:
        yield make
    finally:
        for host in hosts:
            await host.stop()


@pytest_asyncio.fixture
async def fake_host_factory(
    nats_server: NatsServer, provider_factory: Callable[..., ProviderProcess]
) -> AsyncIterator[Callable[..., Awaitable[FakeHost]]]:
    """``await fake_host_factory(start=True, **FakeHost options)``: a host with its provider."""
    async with _hosts_on(nats_server, provider_factory) as make:
        yield make


@pytest_asyncio.fixture
async def fake_host(fake_host_factory: Callable[..., Awaitable[FakeHost]]) -> FakeHost:
    """A started OTP-style FakeHost whose provider is healthy and has ``keys.actor`` linked."""
    return await fake_host_factory()


@pytest.fixture
def attach_log(request: pytest.FixtureRequest) -> Callable[[str, Path], None]:
    """``attach_log(title, path)``: show that log's tail in this test's report if it fails."""
    return lambda title, path: _attach_log(request, title, path)


@pytest.fixture(scope="module")
def module_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream nats-server shared by every test of a module."""
    server = NatsServer(tmp_path_factory.mktemp("module-nats"), jetstream=True)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def module_provider_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., ProviderProcess]]:
    """Like ``provider_factory``, but the processes live until the module's tests are done."""
    log_dir = tmp_path_factory.mktemp("module-logs")
    started: list[ProviderProcess] = []

    def start(stdin_line: bytes, cmd: list[str] | None = None, **kw: Any) -> ProviderProcess:
        name = kw.pop("name", f"provider{len(started)}")
        proc = ProviderProcess(stdin_line, cmd, log_dir=log_dir, name=name, **kw)
        started.append(proc)
        return proc.start()

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def module_fake_host_factory(
    module_nats_server: NatsServer, module_provider_factory: Callable[..., ProviderProcess]
) -> AsyncIterator[Callable[..., Awaitable[FakeHost]]]:
    """``fake_host_factory`` for the module's event loop; hosts are stopped after the module."""
    async with _hosts_on(module_nats_server, module_provider_factory) as make:
        yield make


@pytest.fixture
async def replicas(
    nats_server: NatsServer, log_dir: Path, provider_factory: Callable[..., ProviderProcess]
) -> AsyncIterator[ReplicaSet]:
    """Provider instances of one lattice identity on ``nats_server`` (killed at the end)."""
    async with ReplicaSet(nats_server.url, log_dir, provider_factory) as replica_set:
        yield replica_set
