"""Credentials in NATS URLs never leave the provider: not in its log, its health answers, nor
its ``$SRV.STATS`` status document. Real nats-server (requiring a user and password), real
provider process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provider.observe.introspection import SERVICE_NAME
from wasmbus_testkit import HOST, NatsServer, ProviderProcess, free_port, wait_for
from wasmbus_testkit import KeyValueHost as FakeHost

USER = "alice"
PASSWORD = "pw-" + uuid.uuid4().hex  # unique: it can only appear in output by leaking


class WithCredentials:
    """``server`` as the fake host sees it: every address it hands out carries the credentials
    (``lattice_rpc_url`` in HostData included)."""

    def __init__(self, server: NatsServer) -> None:
        self.port = server.port
        self.host_port = f"{USER}:{PASSWORD}@{HOST}:{server.port}"
        self.url = f"nats://{self.host_port}"


@pytest.fixture
def auth_server(tmp_path: Path, attach_log: Callable[[str, Path], None]) -> Iterator[NatsServer]:
    server = NatsServer(
        tmp_path / "nats-auth",
        jetstream=False,
        extra_config=f"authorization {{\n  user: {json.dumps(USER)}\n"
        f"  password: {json.dumps(PASSWORD)}\n}}",
    )
    attach_log("nats-server (auth)", server.log_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


async def stats_replies(host: FakeHost) -> list[bytes]:
    """Every raw ``$SRV.STATS`` reply for the service (one instance here)."""
    inbox = host.nc.new_inbox()
    subscription = await host.nc.subscribe(inbox)
    try:
        await host.nc.publish(f"$SRV.STATS.{SERVICE_NAME}", b"", reply=inbox)
        return [(await subscription.next_msg(timeout=5)).data]
    finally:
        await subscription.unsubscribe()


async def test_passwords_in_lattice_and_link_urls_are_not_shown(
    auth_server: NatsServer, provider_factory: Callable[..., ProviderProcess]
) -> None:
    secret = WithCredentials(auth_server)
    tag = uuid.uuid4().hex[:8]
    host = FakeHost(
        secret,  # type: ignore[arg-type]  # only .url and .host_port are used
        provider_factory,
        log_level="debug",
        link_values={
            "NATS_URL": f"{secret.url},nats://{USER}:{PASSWORD}@{HOST}:{free_port()}",
            "STATE_REPL_SUBJECT": f"test.{tag}.events",
            "REPLAY_REQ_SUBJECT": f"test.{tag}.replay",
        },
    )
    try:
        await host.start()
        await wait_for(lambda: "replication connected" in host.stderr(), timeout=15)
        await host.kv.set("k", "v")
        health = await host.health()
        assert health.healthy, health
        [stats] = await stats_replies(host)
        log = host.stderr()
    finally:
        await host.stop()

    assert PASSWORD not in (health.message or "")
    assert PASSWORD.encode() not in stats
    status: dict[str, Any] = json.loads(stats)
    assert any(e["name"] == "status" for e in status["endpoints"]), status
    assert PASSWORD not in log, log
    # The URLs are still shown, masked, so an operator can tell which server is meant.
    assert f"nats://{USER}:***@{HOST}:{auth_server.port}" in log, log


async def test_unreachable_replication_server_is_reported_masked(
    nats_server: NatsServer, provider_factory: Callable[..., ProviderProcess]
) -> None:
    """An unreachable JetStream server is named in health and status, without its password."""
    nowhere = f"nats://{USER}:{PASSWORD}@{HOST}:{free_port()}"
    host = FakeHost(
        nats_server,
        provider_factory,
        link_values={"NATS_URL": nowhere, "REPLICATION": "jetstream"},
    )
    try:
        await host.start()

        async def unhealthy() -> bool:
            return not (await host.health()).healthy

        await wait_for(unhealthy, timeout=15)
        health = await host.health()
        [stats] = await stats_replies(host)
        log = host.stderr()
    finally:
        await host.stop()

    masked = f"nats://{USER}:***@{HOST}:"
    assert masked in (health.message or ""), health
    assert PASSWORD not in (health.message or "")
    assert masked.encode() in stats
    assert PASSWORD.encode() not in stats
    assert masked in log, log
    assert PASSWORD not in log, log
