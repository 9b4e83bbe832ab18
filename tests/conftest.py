"""Shared fixtures: real nats-servers, a fault proxy and provider processes.

Every fixture that starts a process kills it in its teardown (SIGKILL, no grace: a test's
result must not depend on how politely its servers die), and a session-end hook reaps anything
a crashed fixture leaked. When a test fails, the tails of the logs of the processes it used
are attached to its report, because "timed out" alone rarely explains a distributed failure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.natsserver import NatsCluster, NatsServer
from tests.harness.processes import ProviderProcess, kill_all_children, tail
from tests.harness.proxy import FaultProxy

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
