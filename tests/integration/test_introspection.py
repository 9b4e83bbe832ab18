"""Introspection end to end: the ``nats-kvcache`` micro service, ``nats-kvcache status`` and the
Prometheus endpoint, against real provider processes and a real nats-server (no mocks).

Replicating instances run under their own lattice prefixes (:class:`ReplicaSet`), so every
status document names its lattice and each instance's ``status`` endpoint subject is its own.
The Prometheus tests launch single instances through :class:`FakeHost` with an environment of
their own (the metrics endpoint is configured by an environment variable, not by HostData).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from prometheus_client.parser import text_string_to_metric_families

from contract.client import KeyValueError
from provider.observe.introspection import SERVICE_NAME, status_subject
from provider.observe.prometheus import ENV_VAR
from tests.harness.replicas import Replica, ReplicaSet, gather_limited, wait_converged
from tests.harness.repo import REPO_ROOT
from wasmbus_testkit import KeyValueHost as FakeHost
from wasmbus_testkit import NatsServer, ProviderProcess, free_port, port_open, wait_for

PERIOD = 1.0  # REPLAY_HEARTBEAT_SECS for the replicating instances
CLI = [sys.executable, "-m", "provider.cli.main"]
WRONGTYPE = "WRONGTYPE"


def repl_values(url: str, tag: str) -> dict[str, str]:
    """Link values that make every instance given the same ``tag`` a peer of the others."""
    return {
        "NATS_URL": url,
        "STATE_REPL_SUBJECT": f"test.{tag}.events",
        "REPLAY_REQ_SUBJECT": f"test.{tag}.replay",
        "REPLAY_HEARTBEAT_SECS": str(PERIOD),
    }


async def gather_replies(
    nc: NATS, subject: str, *, expected: int, timeout: float = 5.0, linger: float = 0.3
) -> list[dict[str, Any]]:
    """One request, every reply: waits for ``expected`` answers, then ``linger`` s for extras."""
    inbox = nc.new_inbox()
    subscription = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(replies) < expected and time.monotonic() < deadline:
            try:
                msg = await subscription.next_msg(timeout=deadline - time.monotonic())
            except NatsTimeoutError:
                break
            replies.append(json.loads(msg.data))
        while True:  # anything beyond the expected number is a failure too
            try:
                msg = await subscription.next_msg(timeout=linger)
            except NatsTimeoutError:
                break
            replies.append(json.loads(msg.data))
        return replies
    finally:
        await subscription.unsubscribe()


def status_data(stats: dict[str, Any]) -> dict[str, Any]:
    """The status document in a ``$SRV.STATS`` reply (the ``status`` endpoint's data)."""
    [endpoint] = [e for e in stats["endpoints"] if e["name"] == "status"]
    assert isinstance(endpoint["data"], dict), endpoint
    return endpoint["data"]


async def statuses_by_lattice(nc: NATS, expected: int) -> dict[str, dict[str, Any]]:
    replies = await gather_replies(nc, f"$SRV.STATS.{SERVICE_NAME}", expected=expected)
    assert len(replies) == expected, replies
    return {doc["lattice"]: doc for doc in map(status_data, replies)}


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NATS_KVCACHE_STATE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


async def run_cli(cwd: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """``nats-kvcache <args>`` as its own process, in a directory without a state file."""
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
async def pair(replicas: ReplicaSet) -> tuple[Replica, Replica]:
    """Two replicating instances (lattices ``lat-a`` and ``lat-b``) with traffic both ways.

    Through A: 5 Sets, 3 Gets and 2 Increments; through B: 2 Sets. Returns once each has
    received the other's writes.
    """
    tag = uuid.uuid4().hex[:8]
    a, b = await replicas.start_many(["a", "b"], repl_values(replicas.lattice_url, tag))
    for i in range(5):
        await a.client.set(f"a:{i}", f"v{i}")
    for i in range(3):
        assert (await a.client.get(f"a:{i}")).value == f"v{i}"
    assert await a.client.increment("counter", 2) == 2
    assert await a.client.increment("counter", 3) == 5
    await b.client.set("b:0", "x")
    await b.client.set("b:1", "y")

    async def crossed_over() -> None:  # read from the status documents: no extra calls
        docs = await statuses_by_lattice(replicas.nc, 2)
        assert [docs[r.lattice]["entries"] for r in (a, b)] == [8, 8], docs

    await wait_converged(crossed_over, timeout=5, message="writes to cross over")
    return a, b


# ----------------------------------------------------------------------------- micro service
async def test_micro_service_ping_info_stats_and_status_endpoint(
    replicas: ReplicaSet, pair: tuple[Replica, Replica]
) -> None:
    a, b = pair
    nc = replicas.nc

    pings = await gather_replies(nc, f"$SRV.PING.{SERVICE_NAME}", expected=2)
    assert len(pings) == 2, pings
    assert {p["name"] for p in pings} == {SERVICE_NAME}
    assert all(p["version"] for p in pings)
    assert len({p["id"] for p in pings}) == 2
    meta = {p["metadata"]["lattice"]: p["metadata"] for p in pings}
    assert set(meta) == {"lat-a", "lat-b"}
    for replica in (a, b):
        m = meta[replica.lattice]
        assert m["provider_key"] == replicas.provider.public_key
        assert m["link_name"] == "default"
        assert m["instance"]

    infos = await gather_replies(nc, f"$SRV.INFO.{SERVICE_NAME}", expected=2)
    assert len(infos) == 2, infos
    for info in infos:
        m = info["metadata"]
        [endpoint] = [e for e in info["endpoints"] if e["name"] == "status"]
        assert endpoint["subject"] == status_subject(m["lattice"], m["link_name"], m["instance"])

    # A's WRONGTYPE error must show in its error count: take the numbers before and after.
    before = (await statuses_by_lattice(nc, 2))["lat-a"]["operations"]
    with pytest.raises(KeyValueError, match=WRONGTYPE):
        await a.client.list_add("a:0", "not-a-list")

    async def traffic_counted() -> dict[str, dict[str, Any]]:
        docs = await statuses_by_lattice(nc, 2)
        assert docs["lat-a"]["replication"]["lag_ms"] is not None
        assert docs["lat-b"]["replication"]["lag_ms"] is not None
        return docs

    docs = await wait_converged(traffic_counted, timeout=5, message="lag to be measured")
    doc_a, doc_b = docs["lat-a"], docs["lat-b"]

    for replica, doc in ((a, doc_a), (b, doc_b)):
        assert doc["instance"] == meta[replica.lattice]["instance"]
        assert doc["provider_key"] == replicas.provider.public_key
        assert doc["healthy"] is True
        assert doc["message"] is None
        assert doc["links"] == 1
        assert doc["entries"] == 8  # a:0..4, b:0..1, counter

    ops = doc_a["operations"]
    assert ops["KeyValue.Set"]["calls"] == 5
    assert ops["KeyValue.Get"]["calls"] == 3
    assert ops["KeyValue.Increment"]["calls"] == 2
    for numbers in ops.values():
        assert {"calls", "errors", "p50_ms", "p99_ms"} <= numbers.keys()
        assert 0 <= numbers["p50_ms"] <= numbers["p99_ms"]
    assert ops["KeyValue.Set"]["errors"] == 0
    assert "KeyValue.ListAdd" not in before
    assert ops["KeyValue.ListAdd"] == ops["KeyValue.ListAdd"] | {"calls": 1, "errors": 1}
    assert doc_b["operations"]["KeyValue.Set"]["calls"] == 2

    for doc, other in ((doc_a, doc_b), (doc_b, doc_a)):
        repl = doc["replication"]
        assert repl["mode"] == "nats"
        assert repl["node"] == doc["node"]
        assert other["node"] in repl["peers"]
        assert repl["batches_sent"] > 0
        assert repl["changes_received"] > 0
        assert repl["lag_ms"] >= 0
        assert repl["connected"] is True
        assert repl["replaying"] is False
        for counter in ("repairs", "gaps", "repair_changes_in", "repair_changes_out"):
            assert isinstance(repl[counter], int), counter

    # The status endpoint answers the same document, for exactly one instance.
    reply = await nc.request(
        status_subject(a.lattice, a.link_name, doc_a["instance"]), b"", timeout=2
    )
    direct = json.loads(reply.data)
    volatile = {"uptime_secs", "replication", "operations"}
    assert {k: v for k, v in direct.items() if k not in volatile} == {
        k: v for k, v in doc_a.items() if k not in volatile
    }
    assert direct["operations"].keys() == doc_a["operations"].keys()
    assert direct["operations"]["KeyValue.Set"]["calls"] == 5
    assert direct["replication"]["node"] == doc_a["replication"]["node"]


# ----------------------------------------------------------------------------- status CLI
async def test_status_cli_json_table_and_exit_codes(
    replicas: ReplicaSet, pair: tuple[Replica, Replica], nats_server: NatsServer, tmp_path: Path
) -> None:
    a, b = pair
    url = nats_server.url

    result = await run_cli(tmp_path, "status", "--json", "--nats-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = json.loads(result.stdout)
    assert isinstance(listed, list)
    assert [s["lattice"] for s in listed] == ["lat-a", "lat-b"]
    instances = [s["instance"] for s in listed]
    assert all(s["healthy"] for s in listed)
    assert listed[0]["operations"]["KeyValue.Set"]["calls"] == 5

    result = await run_cli(tmp_path, "status", "--json", "--nats-url", url, "--lattice", "lat-b")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [s["instance"] for s in json.loads(result.stdout)] == [instances[1]]

    result = await run_cli(tmp_path, "status", "--nats-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line[:8] in {i[:8] for i in instances}]
    assert len(rows) == 2, result.stdout
    for row in rows:
        assert row.split()[1] == "healthy", row
        assert "nats" in row.split()

    a.kill()
    b.kill()
    result = await run_cli(tmp_path, "status", "--nats-url", url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no nats-kvcache instance answered" in result.stdout

    nowhere = f"nats://alice:s3cret@127.0.0.1:{free_port()}"
    result = await run_cli(tmp_path, "status", "--nats-url", nowhere)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "cannot connect to NATS at nats://alice:***@127.0.0.1:" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


# ----------------------------------------------------------------------------- Prometheus
def _env(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(ENV_VAR, None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@pytest.fixture
async def host_with_env(
    nats_server: NatsServer, provider_factory: Callable[..., ProviderProcess]
) -> AsyncIterator[Callable[[dict[str, str]], Awaitable[FakeHost]]]:
    """``await host_with_env(env)``: a started FakeHost whose provider runs with ``env``."""
    hosts: list[FakeHost] = []

    async def make(env: dict[str, str]) -> FakeHost:
        host = FakeHost(nats_server, lambda line: provider_factory(line, env=env))
        hosts.append(host)
        return await host.start()

    try:
        yield make
    finally:
        for host in hosts:
            await host.stop()


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``GET /metrics`` and parse it: {(sample name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def pick(samples: dict, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples called ``name`` whose labels include ``labels``."""
    return [
        (dict(key), value)
        for (sample, key), value in samples.items()
        if sample == name and set(labels.items()) <= key
    ]


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (Linux /proc: its socket inodes in LISTEN state)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_prometheus_endpoint_exports_the_status_numbers(host_with_env) -> None:
    port = free_port()
    host: FakeHost = await host_with_env(_env(**{ENV_VAR: f"127.0.0.1:{port}"}))
    kv = host.kv
    sets = 7
    for i in range(sets):
        await kv.set(f"k{i}", str(i))
    for i in range(3):
        await kv.get(f"k{i}")
    assert await kv.increment("n", 4) == 4
    for _ in range(2):
        with pytest.raises(KeyValueError, match=WRONGTYPE):
            await kv.set_add("k0", "x")

    await wait_for(lambda: port_open("127.0.0.1", port), 5, message="metrics endpoint")
    assert listening_ports(host.process.pid) == {port}  # (and the helper below works)
    samples = await asyncio.to_thread(scrape, port)

    ident = {"instance": host.host_data.instance_id, "lattice": "default", "link_name": "default"}

    def one(name: str, **labels: str) -> float:
        [(found_labels, value)] = pick(samples, name, **labels)
        assert ident.items() <= found_labels.items(), found_labels
        return value

    assert one("kvcache_operations_total", operation="KeyValue.Set") == sets
    assert one("kvcache_operations_total", operation="KeyValue.Get") == 3
    assert one("kvcache_operations_total", operation="KeyValue.Increment") == 1
    assert one("kvcache_operations_total", operation="KeyValue.SetAdd") == 2
    assert one("kvcache_operation_errors_total", operation="KeyValue.SetAdd") == 2
    assert one("kvcache_operation_errors_total", operation="KeyValue.Set") == 0
    assert one("kvcache_entries") == sets + 1
    assert one("kvcache_healthy") == 1
    assert one("kvcache_links") == 1
    quantiles = {
        labels["quantile"]: value
        for labels, value in pick(
            samples, "kvcache_operation_latency_seconds", operation="KeyValue.Set"
        )
    }
    assert set(quantiles) == {"0.5", "0.9", "0.99"}
    assert 0 < quantiles["0.5"] <= quantiles["0.9"] <= quantiles["0.99"] < 5

    # A scrape is a fresh status document: later calls show up in the next one.
    await kv.set("late", "1")
    samples = await asyncio.to_thread(scrape, port)
    assert one("kvcache_operations_total", operation="KeyValue.Set") == sets + 1
    assert one("kvcache_entries") == sets + 2


async def test_no_metrics_endpoint_without_the_variable(host_with_env) -> None:
    port = free_port()
    host: FakeHost = await host_with_env(_env())  # the variable removed from the environment
    await host.kv.set("k", "v")
    assert not port_open("127.0.0.1", port)
    assert listening_ports(host.process.pid) == set()


async def test_invalid_metrics_address_is_logged_and_ignored(host_with_env) -> None:
    host: FakeHost = await host_with_env(_env(**{ENV_VAR: "nonsense"}))
    await host.kv.set("k", "v")
    assert (await host.kv.get("k")).value == "v"
    health = await host.health()
    assert health.healthy and health.message is None
    stderr = host.stderr()
    assert "metrics endpoint not started" in stderr
    assert "nonsense" in stderr
    assert listening_ports(host.process.pid) == set()


# ----------------------------------------------------------------------------- replay logs
async def test_late_joiner_logs_replay_progress(
    nats_server: NatsServer, provider_factory: Callable[..., ProviderProcess]
) -> None:
    keys = 20_000
    values = repl_values(nats_server.url, uuid.uuid4().hex[:8])
    a = FakeHost(nats_server, provider_factory, lattice="lat-a", link_values=values)
    late = FakeHost(
        nats_server,
        provider_factory,
        lattice="lat-late",
        link_values=values,
        structured_logging=True,
        keys=a.keys,  # one lattice: the same cluster key signs and is trusted
    )
    try:
        await a.start()
        await gather_limited((a.kv.set(f"key:{i}", str(i)) for i in range(keys)), 200)
        await late.start()

        async def replayed() -> bool:
            answer = await late.health(timeout=1)
            return answer.healthy and answer.message is None

        await wait_for(replayed, 20, interval=0.05, message="late joiner to finish its replay")
        events = [json.loads(line) for line in late.stderr().splitlines() if line.strip()]
        [done] = [e for e in events if e.get("event") == "replay complete"]
        assert done["keys"] == keys
        assert done["level"] == "info"
        if done["seconds"] >= 1.0:  # a replay under a second has no progress line to show
            progress = [e for e in events if e.get("event") == "replay progress"]
            assert progress, events
            assert all(0 < p["merged"] <= keys and p["keys_per_sec"] > 0 for p in progress)
        assert (await late.kv.get(f"key:{keys - 1}")).value == str(keys - 1)
    finally:
        await a.stop()
        await late.stop()
