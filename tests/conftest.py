"""Shared fixtures: the test kit's plugin, told how to start this provider, plus replicas.

``wasmbus_testkit.pytest_plugin`` supplies the real nats-servers, the fault proxy, provider
processes and fake hosts (see its docstring). This file only says what is particular to this
project: the provider's command, that its hosts speak ``wasmcloud:keyvalue``
(:class:`~wasmbus_testkit.keyvalue.KeyValueHost`, so ``fake_host.kv`` is a typed client), and
the ``replicas`` fixture of several instances replicating with each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from tests.harness.replicas import ReplicaSet
from tests.harness.repo import PROVIDER_COMMAND
from wasmbus_testkit import FakeHost, KeyValueHost, NatsServer, ProviderProcess

pytest_plugins = ["wasmbus_testkit.pytest_plugin"]


@pytest.fixture(scope="session")
def provider_command() -> Sequence[str]:
    return PROVIDER_COMMAND


@pytest.fixture(scope="session")
def fake_host_class() -> Callable[..., FakeHost]:
    return KeyValueHost


@pytest.fixture
async def replicas(
    nats_server: NatsServer, log_dir: Path, provider_factory: Callable[..., ProviderProcess]
) -> AsyncIterator[ReplicaSet]:
    """Provider instances of one lattice identity on ``nats_server`` (killed at the end)."""
    async with ReplicaSet(nats_server.url, log_dir, provider_factory) as replica_set:
        yield replica_set
