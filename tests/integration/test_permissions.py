"""The README's production set-up, proven: NATS permissions keep everyone but the providers off
the replication subjects, and replication works through them, in both modes.

The server runs ``docs/security/replication-server.conf`` exactly as shipped (only the
passwords are filled in). The lattice (RPC) traffic runs on a second, open server, as it would
with the host's own NATS.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest

from tests.harness.replicas import ReplicaSet, wait_converged
from wasmbus_testkit import HOST, NatsServer

CONFIG = Path(__file__).resolve().parents[2] / "docs" / "security" / "replication-server.conf"
KVCACHE_PASSWORD = "kv-" + uuid.uuid4().hex
APP_PASSWORD = "app-" + uuid.uuid4().hex


@pytest.fixture
def guarded_server(tmp_path: Path, attach_log: Callable[[str, Path], None]) -> Iterator[NatsServer]:
    config = CONFIG.read_text()
    config = config.replace("KVCACHE_PASSWORD", KVCACHE_PASSWORD)
    config = config.replace("APP_PASSWORD", APP_PASSWORD)
    server = NatsServer(tmp_path / "guarded", jetstream=True, extra_config=config)
    attach_log("nats-server (permissions)", server.log_path)
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.mark.parametrize("mode", ["nats", "jetstream"])
async def test_only_providers_may_use_the_replication_subjects(
    replicas: ReplicaSet, guarded_server: NatsServer, mode: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    values = {
        "NATS_URL": f"nats://kvcache:{KVCACHE_PASSWORD}@{HOST}:{guarded_server.port}",
        "REPLICATION": mode,
        "STATE_REPL_SUBJECT": f"kvcache.perm-{tag}.events",
        "REPLAY_REQ_SUBJECT": f"kvcache.perm-{tag}.replay",
        "CACHE_PREFIX": f"perm-{tag}",
        "REPLAY_HEARTBEAT_SECS": "1",
    }
    a, b = replicas.add("a", values), replicas.add("b", values)
    await replicas.start(a, b)

    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    app = await nats.connect(
        f"nats://app:{APP_PASSWORD}@{HOST}:{guarded_server.port}", error_cb=on_error
    )
    try:
        seen: list[str] = []

        async def record(msg: nats.aio.msg.Msg) -> None:
            seen.append(msg.subject)

        for subject in ("kvcache.>", "lc.>", "kvcache._INBOX.>"):
            await app.subscribe(subject, cb=record)
        await app.publish(f"kvcache.perm-{tag}.events", b"forged")
        await app.flush()

        # Replication works through the permissions, both ways.
        await a.client.set("from-a", "1")
        await b.client.set("from-b", "2")

        async def converged() -> None:
            for replica in (a, b):
                assert (await replica.client.get("from-a")).value == "1"
                assert (await replica.client.get("from-b")).value == "2"

        await wait_converged(converged, timeout=15)
        await asyncio.sleep(0.5)
        assert seen == [], f"the app user read replication traffic: {seen[:5]}"
        violations = " ".join(errors).lower()
        assert "violation for subscription" in violations, errors
        assert "violation for publish" in violations, errors
        for replica in (a, b):
            health = await replica.health()
            assert health.healthy, health
            log = replica.log_text().lower()
            assert "permissions violation" not in log, replica.log_text()[-2000:]
    finally:
        await app.close()
