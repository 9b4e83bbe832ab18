"""pytest fixtures for provider tests: servers, a fault proxy, provider processes, fake hosts.

Enable it with ``pytest_plugins = ["wasmbus_testkit.pytest_plugin"]`` in your top-level
``conftest.py`` (or in a test module). Installing the distribution also registers it under the
``pytest11`` entry point of the same name, so either way it is loaded once.

Tell it how to start your provider by overriding one fixture, session-scoped (or pass
``cmd=`` to every ``provider_factory`` call)::

    @pytest.fixture(scope="session")
    def provider_command() -> list[str]:
        return [sys.executable, "-m", "my_provider"]

Every fixture that starts a process kills it in its teardown (SIGKILL, no grace: a test's
result must not depend on how politely its servers die), and the session-end hook reaps anything
a crashed fixture leaked. When a test fails, the tails of the logs of the processes it used are
attached to its report, because "timed out" alone rarely explains a distributed failure.

Function-scoped fixtures give each test its own server and provider. Modules whose tests don't
interfere can share them through the ``module_*`` fixtures, whose async parts live on the
module's event loop: such a module marks its tests ``pytest.mark.asyncio(loop_scope="module")``.
Async fixtures need pytest-asyncio (the ``testkit`` extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from wasmbus_testkit.children import kill_all_children, tail
from wasmbus_testkit.fakehost import FakeHost
from wasmbus_testkit.faultproxy import FaultProxy
from wasmbus_testkit.natsserver import HOST, NatsServer
from wasmbus_testkit.process import ProviderProcess
from wasmbus_testkit.topologies import NatsCluster, NatsLeafnodes

__all__ = [
    "FakeHostFactory",
    "ProviderFactory",
    "attach_log",
    "fake_host",
    "fake_host_class",
    "fake_host_factory",
    "fault_proxy",
    "log_dir",
    "module_fake_host_factory",
    "module_nats_server",
    "module_provider_factory",
    "nats_cluster",
    "nats_leafnodes",
    "nats_server",
    "provider_command",
    "provider_factory",
]

#: ``provider_factory(stdin_line, cmd=None, **ProviderProcess options)`` -> a started process.
ProviderFactory = Callable[..., ProviderProcess]
#: ``await fake_host_factory(start=True, **host options)`` -> a (started) fake host.
FakeHostFactory = Callable[..., Awaitable[FakeHost]]

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
def attach_log(request: pytest.FixtureRequest) -> Callable[[str, Path], None]:
    """``attach_log(title, path)``: show that log's tail in this test's report if it fails."""
    return lambda title, path: _attach_log(request, title, path)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Directory for child-process logs of one test."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


# -- nats-server topologies --------------------------------------------------------------------


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
def nats_leafnodes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[NatsLeafnodes]:
    """A JetStream hub with two leaf servers connected to it."""
    topology = NatsLeafnodes(tmp_path / "leafnodes", leaves=2)
    for server in topology.servers:
        _attach_log(request, server.server_name, server.log_path)
    try:
        topology.start()
        yield topology
    finally:
        topology.kill_all()


@pytest.fixture
def fault_proxy(nats_server: NatsServer) -> Iterator[FaultProxy]:
    """A FaultProxy in front of ``nats_server``; connect clients to ``fault_proxy.url``."""
    proxy = FaultProxy(HOST, nats_server.port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def module_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One JetStream nats-server shared by every test of a module."""
    server = NatsServer(tmp_path_factory.mktemp("module-nats"), jetstream=True)
    try:
        server.start()
        yield server
    finally:
        server.kill()


# -- provider processes ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def provider_command() -> Sequence[str] | None:
    """The command line that starts the provider under test. Override it (session scope).

    ``None`` (the default) means every ``provider_factory`` call must pass ``cmd``.
    """
    return None


def _factory(
    log_dir: Path,
    default_cmd: Sequence[str] | None,
    started: list[ProviderProcess],
    on_start: Callable[[ProviderProcess], None] = lambda proc: None,
) -> ProviderFactory:
    def start(stdin_line: bytes, cmd: Sequence[str] | None = None, **kw: Any) -> ProviderProcess:
        name = kw.pop("name", f"provider{len(started)}")
        command = default_cmd if cmd is None else cmd
        if command is None:
            raise RuntimeError(
                "no provider command: pass cmd=..., or override the session-scoped "
                "`provider_command` fixture in your conftest.py"
            )
        proc = ProviderProcess(stdin_line, command, log_dir=log_dir, name=name, **kw)
        started.append(proc)
        on_start(proc)
        return proc.start()

    return start


@pytest.fixture
def provider_factory(
    log_dir: Path, provider_command: Sequence[str] | None, request: pytest.FixtureRequest
) -> Iterator[ProviderFactory]:
    """Start provider processes: ``provider_factory(stdin_line, cmd=None, **kw)``.

    ``cmd`` defaults to ``provider_command``; ``kw`` are :class:`ProviderProcess` options
    (``env``, ``cwd``, ``name``). Every process started through the factory is SIGKILLed at
    teardown, and its stderr is attached to the report of a failed test.
    """
    started: list[ProviderProcess] = []

    def attach(proc: ProviderProcess) -> None:
        _attach_log(request, f"{proc.name} stderr", proc.stderr_path)

    try:
        yield _factory(log_dir, provider_command, started, attach)
    finally:
        for proc in started:
            proc.kill()


@pytest.fixture(scope="module")
def module_provider_factory(
    tmp_path_factory: pytest.TempPathFactory, provider_command: Sequence[str] | None
) -> Iterator[ProviderFactory]:
    """Like ``provider_factory``, but the processes live until the module's tests are done."""
    started: list[ProviderProcess] = []
    try:
        yield _factory(tmp_path_factory.mktemp("module-logs"), provider_command, started)
    finally:
        for proc in started:
            proc.kill()


# -- fake hosts --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def fake_host_class() -> Callable[..., FakeHost]:
    """What ``fake_host_factory`` builds: FakeHost, or e.g. KeyValueHost (override it)."""
    return FakeHost


@contextlib.asynccontextmanager
async def _hosts_on(
    server: NatsServer, launch: ProviderFactory, host_class: Callable[..., FakeHost]
) -> AsyncIterator[FakeHostFactory]:
    """A host factory on ``server``; every host it made is stopped on exit."""
    hosts: list[FakeHost] = []

    async def make(*, start: bool = True, **options: Any) -> FakeHost:
        host = host_class(server, launch, **options)
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
    nats_server: NatsServer,
    provider_factory: ProviderFactory,
    fake_host_class: Callable[..., FakeHost],
) -> AsyncIterator[FakeHostFactory]:
    """``await fake_host_factory(start=True, **host options)``: a host with its provider."""
    async with _hosts_on(nats_server, provider_factory, fake_host_class) as make:
        yield make


@pytest_asyncio.fixture
async def fake_host(fake_host_factory: FakeHostFactory) -> FakeHost:
    """A started OTP-style host whose provider is healthy and has ``keys.actor`` linked.

    Needs a ``fake_host_class`` that knows the contract (FakeHost itself needs a
    ``contract_id``: use ``fake_host_factory(contract_id=...)`` for it).
    """
    return await fake_host_factory()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def module_fake_host_factory(
    module_nats_server: NatsServer,
    module_provider_factory: ProviderFactory,
    fake_host_class: Callable[..., FakeHost],
) -> AsyncIterator[FakeHostFactory]:
    """``fake_host_factory`` for the module's event loop; hosts are stopped after the module."""
    async with _hosts_on(module_nats_server, module_provider_factory, fake_host_class) as make:
        yield make
