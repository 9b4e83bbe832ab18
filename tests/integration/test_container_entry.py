"""The container's entrypoint and health check, run as the image runs them (minus Docker).

``docker/provider-from-env.sh`` starts a real provider from environment variables against a
real nats-server; ``nats-kvcache health`` (the Dockerfile's ``HEALTHCHECK``) then reads the same
variables, and a signed call from the compose file's actor goes through. The ``nats-kvcache
call`` example documented in docker-compose.yml and the README is run as written (only the NATS
address differs) against a provider started with the compose file's default keys.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from contract.client import KeyValueClient
from contract.nkeys import KeyPair
from contract.wire import SHUTDOWN_ACK, HealthCheckResponse, Subjects
from tests.harness.repo import REPO_ROOT
from tests.unit.test_compose import PROVIDERS, _comment_block, _provider_env, documented_call
from wasmbus_testkit import NatsServer, flush_in_order, wait_for

SCRIPT = REPO_ROOT / "docker" / "provider-from-env.sh"
COMPOSE = REPO_ROOT / "docker-compose.yml"
CLI = [sys.executable, "-m", "provider.cli.main"]


class Keys:
    def __init__(self) -> None:
        self.provider = KeyPair.generate("service")
        self.cluster = KeyPair.generate("cluster")
        self.actor = KeyPair.generate("module")
        self.host = KeyPair.generate("server")


def _env(server: NatsServer, keys: Keys, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_KVCACHE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(
        LATTICE_RPC_URL=server.host_port,
        PROVIDER_KEY=keys.provider.public_key,
        CLUSTER_SEED=keys.cluster.seed,
        HOST_ID=keys.host.public_key,
        LINK_ACTORS=keys.actor.public_key,
        NATS_URL=server.url,
        **extra,
    )
    return env


def health(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "health", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def entry(nats_server: NatsServer, keys: Keys, tmp_path: Path) -> Iterator[subprocess.Popen]:
    env = _env(nats_server, keys)
    with (tmp_path / "provider.log").open("wb") as log:
        proc = subprocess.Popen(
            ["sh", str(SCRIPT)], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stderr=log
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_entrypoint_starts_a_healthy_provider_that_serves_the_linked_actor(
    entry: subprocess.Popen, nats_server: NatsServer, keys: Keys, tmp_path: Path
) -> None:
    env = _env(nats_server, keys)

    async def healthy() -> bool:
        result = health(env, "--timeout", "1", cwd=tmp_path)
        assert entry.poll() is None, (tmp_path / "provider.log").read_text()
        return result.returncode == 0 and "healthy" in result.stdout

    await wait_for(healthy, timeout=20, interval=0.2, message="provider healthy")
    quiet = health(env, "--quiet", cwd=tmp_path)
    assert (quiet.returncode, quiet.stdout) == (0, "")

    nc = await nats.connect(nats_server.url)
    try:
        client = KeyValueClient(
            nc,
            lattice_prefix="default",
            provider_key=keys.provider.public_key,
            signer=keys.cluster,
            actor_key=keys.actor.public_key,
        )
        await client.set("from-env", "works")
        assert (await client.get("from-env")).value == "works"
        # The script exec'd the provider: the shutdown request stops the script's own pid.
        body = json.dumps({"host_id": keys.host.public_key}).encode()
        subjects = Subjects("default", keys.provider.public_key, "default")
        reply = await nc.request(subjects.shutdown, body)
        assert reply.data == SHUTDOWN_ACK
    finally:
        await nc.close()
    assert entry.wait(timeout=15) == 0
    assert keys.cluster.seed not in (tmp_path / "provider.log").read_text()


def test_health_exit_codes_without_a_provider(
    nats_server: NatsServer, keys: Keys, tmp_path: Path
) -> None:
    env = _env(nats_server, keys)
    nobody = health(env, "--timeout", "0.5", cwd=tmp_path)
    assert nobody.returncode == 3 and "no answer" in nobody.stderr

    unconfigured = {k: v for k, v in env.items() if k != "PROVIDER_KEY"}
    assert health(unconfigured, cwd=tmp_path).returncode == 2
    skipped = health(unconfigured, "--skip-unconfigured", cwd=tmp_path)
    assert skipped.returncode == 0 and "not checked" in skipped.stdout

    no_nats = {**env, "LATTICE_RPC_URL": "127.0.0.1:1"}
    unreachable = health(no_nats, "--timeout", "1", cwd=tmp_path)
    assert unreachable.returncode == 3 and "cannot connect" in unreachable.stderr


async def test_health_reports_an_unhealthy_answer(
    nats_server: NatsServer, keys: Keys, tmp_path: Path
) -> None:
    """A stand-in that answers health like the provider does when replication is down."""
    nc = await nats.connect(nats_server.url)
    subject = Subjects("default", keys.provider.public_key, "default").health
    reply = HealthCheckResponse(False, "replication down for 12 s").encode_msgpack()

    async def answer(msg: nats.aio.msg.Msg) -> None:
        await msg.respond(reply)

    await nc.subscribe(subject, cb=answer)
    await flush_in_order(nc)
    try:
        result = await asyncio.to_thread(health, _env(nats_server, keys), cwd=tmp_path)
        assert result.returncode == 1 and "replication down for 12 s" in result.stderr
    finally:
        await nc.close()


async def test_documented_compose_call_works_with_the_default_keys(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A provider started from the compose file's own environment (default keys) serves the
    call example from the compose file's comments, run with no NATS_KVCACHE_* variables set."""
    provider_env = {
        **_provider_env(PROVIDERS[0]),
        "LATTICE_RPC_URL": nats_server.host_port,
        "NATS_URL": nats_server.url,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_KVCACHE_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(REPO_ROOT)
    with (tmp_path / "provider.log").open("wb") as log:
        proc = subprocess.Popen(
            ["sh", str(SCRIPT)],
            env={**env, **provider_env},
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        call_env, argv = documented_call(_comment_block(COMPOSE))
        assert argv[:2] == ["nats-kvcache", "call"]
        url = argv.index("--nats-url") + 1
        assert argv[url] == "nats://127.0.0.1:4222"  # the port compose publishes
        argv[url] = nats_server.url

        def run(*words: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*CLI, *words],
                env={**env, **call_env},
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            )

        async def answered() -> bool:
            assert proc.poll() is None, (tmp_path / "provider.log").read_text()
            result = await asyncio.to_thread(run, *argv[1:])
            return result.returncode == 0

        await wait_for(answered, timeout=20, interval=0.3, message="documented call answered")
        assert argv[-3:] == ["set", "greeting", "hello"]
        result = run(*argv[1:-3], "get", "greeting")
        assert (result.returncode, result.stdout) == (0, "hello\n"), result.stderr
        assert call_env["NATS_KVCACHE_SEED"] not in result.stdout + result.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
