"""The test kit (``wasmbus_testkit``) itself, exercised against real nats-servers.

If these fail, every integration failure is suspect, so they pin down exactly the behaviours
other tests lean on: restarts keep data and ports, each proxy fault looks to a client the way
the docstrings promise, a 3-node cluster tolerates losing a node, leaf servers reach each other
through their hub, and a provider child keeps its stdin open. (Its pure parts are tested in
``tests/unit/test_testkit.py``.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import StorageType, StreamConfig

from wasmbus_testkit import (
    FaultProxy,
    NatsCluster,
    NatsLeafnodes,
    NatsServer,
    ProviderProcess,
    flush_in_order,
    port_open,
    wait_for,
)

FAST_RECONNECT: dict[str, Any] = {
    "reconnect_time_wait": 0.05,
    "max_reconnect_attempts": -1,
    "connect_timeout": 1,
}


@asynccontextmanager
async def client(url: str | list[str], **kw: Any) -> AsyncIterator[Client]:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    kw.setdefault("error_cb", on_error)
    nc = await nats.connect(url, **kw)
    nc.test_errors = errors  # type: ignore[attr-defined]
    try:
        yield nc
    finally:
        await nc.close()


async def collect(nc: Client, subject: str) -> list[bytes]:
    """Subscribe and return the live list that received payloads are appended to."""
    got: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        got.append(msg.data)

    await nc.subscribe(subject, cb=on_msg)
    await flush_in_order(nc)
    return got


# -- NatsServer -------------------------------------------------------------------------------


async def test_server_start_stop_restart_keeps_port_and_jetstream_data(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "s", jetstream=True)
    with server:
        url = server.url
        async with client(url) as nc:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name="S", subjects=["s.>"], storage=StorageType.FILE))
            await js.publish("s.1", b"before-kill")

        server.kill()  # a crash: file-storage data must survive it
        assert not port_open("127.0.0.1", server.port)
        server.restart()
        assert server.url == url
        async with client(url) as nc:
            msg = await nc.jetstream().get_last_msg("S", "s.1")
            assert msg.data == b"before-kill"

        assert server.stop() == 0  # SIGTERM is a clean exit
        assert not server.is_running()
    assert "Server is ready" in server.log_text()


# -- FaultProxy -------------------------------------------------------------------------------


async def test_proxy_pass_through(fault_proxy: FaultProxy) -> None:
    async with client(fault_proxy.url) as nc:
        got = await collect(nc, "greet")

        async def echo(msg: Any) -> None:
            await nc.publish(msg.reply, msg.data)

        await nc.subscribe("echo", cb=echo)
        await nc.publish("greet", b"hi")
        reply = await nc.request("echo", b"ping", timeout=2)
        assert reply.data == b"ping"
        await wait_for(lambda: got == [b"hi"], 2)
        assert not nc.test_errors  # type: ignore[attr-defined]


async def test_cut_disconnects_and_heal_reconnects(fault_proxy: FaultProxy) -> None:
    disconnected, reconnected = asyncio.Event(), asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    async def on_reconnect() -> None:
        reconnected.set()

    async with client(
        fault_proxy.url,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **FAST_RECONNECT,
    ) as nc:
        fault_proxy.cut()
        await asyncio.wait_for(disconnected.wait(), 5)
        await asyncio.sleep(0.3)  # several reconnect attempts, all refused while cut
        assert not nc.is_connected
        assert not reconnected.is_set()

        fault_proxy.heal()
        await asyncio.wait_for(reconnected.wait(), 5)
        got = await collect(nc, "after")
        await nc.publish("after", b"ok")
        await wait_for(lambda: got == [b"ok"], 2)


async def test_blackhole_stalls_delivery_until_healed(
    nats_server: NatsServer, fault_proxy: FaultProxy
) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    async with (
        client(fault_proxy.url, reconnected_cb=on_reconnect, **FAST_RECONNECT) as sub,
        client(nats_server.url) as pub,
    ):
        got = await collect(sub, "bh")
        fault_proxy.blackhole()
        await pub.publish("bh", b"lost")
        await pub.flush()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.flush(timeout=0.3)  # the link is stalled: no PONG comes back
        assert got == []
        assert sub.is_connected  # nothing was closed: the client can't tell it's dead

        fault_proxy.heal()  # resets the blackholed connection; the client reconnects
        await asyncio.wait_for(reconnected.wait(), 5)
        await pub.publish("bh", b"after")
        await wait_for(lambda: got == [b"after"], 3)


async def test_stall_delivers_backlog_on_heal(
    nats_server: NatsServer, fault_proxy: FaultProxy
) -> None:
    async with client(fault_proxy.url) as sub, client(nats_server.url) as pub:
        got = await collect(sub, "st")
        fault_proxy.stall()
        for i in range(3):
            await pub.publish("st", str(i).encode())
        await pub.flush()
        await asyncio.sleep(0.2)
        assert got == []
        fault_proxy.heal()
        await wait_for(lambda: got == [b"0", b"1", b"2"], 3)


async def test_drop_loses_about_half_of_messages_without_protocol_errors(
    nats_server: NatsServer, fault_proxy: FaultProxy
) -> None:
    async with client(fault_proxy.url) as sub, client(nats_server.url) as pub:
        got = await collect(sub, "drop.>")
        fault_proxy.drop(0.5, seed=7)
        for i in range(200):
            await pub.publish(f"drop.{i}", f"m{i}".encode())
        await pub.flush()
        await sub.flush(timeout=2)  # PING/PONG still pass: the stream is intact
        await wait_for(lambda: len(got) + fault_proxy.dropped >= 200, 3)

        assert len(got) + fault_proxy.dropped == 200
        assert 60 <= len(got) <= 140
        assert got == sorted(got, key=lambda b: int(b[1:]))  # survivors arrive in order
        assert sub.is_connected
        assert not sub.test_errors  # type: ignore[attr-defined]

        fault_proxy.heal()
        reply_sub = await collect(sub, "drop.final")
        await pub.publish("drop.final", b"x")
        await wait_for(lambda: reply_sub == [b"x"], 2)


# -- NatsCluster ------------------------------------------------------------------------------


async def test_cluster_replicated_stream_survives_killing_a_node(
    nats_cluster: NatsCluster,
) -> None:
    async with client(nats_cluster.urls, **FAST_RECONNECT) as nc:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="R3", subjects=["r3.>"], num_replicas=3))

        async def first_publish_ok() -> bool:
            # A new R3 stream answers only once its leader is elected (slow on a loaded machine).
            await js.publish("r3.a", b"1", timeout=1, headers={"Nats-Msg-Id": "first"})
            return True

        await wait_for(first_publish_ok, 20, interval=0.2, message="R3 stream leader elected")
        info = await js.stream_info("R3")
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2

        leader = nats_cluster.by_name(info.cluster.leader or "")
        leader.kill()  # the stream leader crashes; the two survivors keep quorum

        async def publish_ok() -> bool:
            await js.publish("r3.b", b"2", timeout=1)
            return True

        await wait_for(publish_ok, 20, interval=0.2, message="R3 publish after leader loss")
        info = await js.stream_info("R3")
        assert info.state.messages == 2
        assert info.cluster is not None and info.cluster.leader != leader.server_name

        nats_cluster.restart(nats_cluster.servers.index(leader))  # same ports, same store

        async def all_replicas_current() -> bool:
            cluster = (await js.stream_info("R3")).cluster
            replicas = (cluster.replicas or []) if cluster else []
            return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)

        await wait_for(all_replicas_current, 10, interval=0.1, message="restarted replica current")


# -- NatsLeafnodes ---------------------------------------------------------------------------


async def test_leaf_servers_reach_each_other_and_the_hub_jetstream(
    nats_leafnodes: NatsLeafnodes,
) -> None:
    hub, (leaf0, leaf1) = nats_leafnodes.hub, nats_leafnodes.leaves
    assert hub.http_json("/leafz")["leafnodes"] == 2
    async with client(leaf0.url) as sub, client(leaf1.url) as pub, client(hub.url) as hub_nc:
        got = await collect(sub, "across.>")
        on_hub = await collect(hub_nc, "across.>")

        async def delivered() -> bool:  # a leaf learns remote interest a moment after SUB
            await pub.publish("across.leaf", b"x")
            await pub.flush()
            return bool(got) and bool(on_hub)

        await wait_for(delivered, 5, interval=0.1, message="message across the leaf links")

        # A leaf has no JetStream of its own: its plain JetStream API reaches the hub's domain.
        js = pub.jetstream()

        async def stream_added() -> bool:  # the hub's API interest reaches the leaf shortly
            await js.add_stream(StreamConfig(name="LEAFY", subjects=["leafy.>"]))
            return True

        await wait_for(stream_added, 5, interval=0.1, message="JetStream API through the leaf")
        await js.publish("leafy.1", b"stored")
        stored = await hub_nc.jetstream(domain="hub").get_last_msg("LEAFY", "leafy.1")
        assert stored.data == b"stored"

    leaf1.kill()
    await asyncio.to_thread(nats_leafnodes.restart_leaf, 1)
    assert hub.http_json("/leafz")["leafnodes"] == 2


async def test_a_leaf_added_at_runtime_joins_the_hub(tmp_path: Path) -> None:
    """How ``nats-kvcache dev`` grows: a hub alone, then one leaf per new host, each in its own
    process group and logging where it is told."""
    topology = NatsLeafnodes(tmp_path / "t", leaves=0, new_process_group=True, reap_at_exit=False)
    try:
        await asyncio.to_thread(topology.start)
        leaf = topology.add_leaf(log_path=tmp_path / "logs" / "leaf-0.log")
        leaf.start(wait_ready=False)
        await asyncio.to_thread(topology.wait_connected)
        assert topology.hub.http_json("/leafz")["leafnodes"] == 1
        for server in topology.servers:
            assert server.pid is not None and os.getpgid(server.pid) == server.pid
        assert "Server is ready" in (tmp_path / "logs" / "leaf-0.log").read_text()
        leaf.kill()
        assert leaf.returncode == -9 and topology.hub.returncode is None
    finally:
        topology.kill_all()


# -- ProviderProcess --------------------------------------------------------------------------


async def test_provider_process_one_log_own_group_and_a_graceful_stop(tmp_path: Path) -> None:
    # Writes to both streams, then ignores SIGTERM: stop() must fall back to SIGKILL.
    script = (
        "import signal, sys, time; sys.stdout.write('out\\n'); sys.stdout.flush();"
        "sys.stderr.write('err\\n'); sys.stderr.flush();"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); sys.stderr.write('ready\\n');"
        "sys.stderr.flush(); time.sleep(60)"
    )
    log = tmp_path / "provider-0.log"
    proc = ProviderProcess(
        b"x", [sys.executable, "-c", script], log_path=log, new_process_group=True
    ).start()
    try:
        await wait_for(lambda: "ready" in proc.stderr_text(), 5)
        assert log.read_text().splitlines() == ["out", "err", "ready"]
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        assert await asyncio.to_thread(proc.stop, 0.2) == -9
    finally:
        proc.kill()
    polite = ProviderProcess(b"x", [sys.executable, "-c", "import time; time.sleep(60)"])
    with polite:
        assert polite.stop(5) == -15  # SIGTERM was enough


def test_children_left_to_their_owner_outlive_the_kits_at_exit_reaping() -> None:
    """``reap_at_exit=False`` (``nats-kvcache dev``'s providers) is not SIGKILLed by the kit
    when the interpreter exits; the default still is."""
    script = (
        "import sys; from wasmbus_testkit import ProviderProcess;"
        "cmd = [sys.executable, '-c', 'import time; time.sleep(60)'];"
        "owned = ProviderProcess(b'x', cmd, reap_at_exit=False).start();"
        "reaped = ProviderProcess(b'x', cmd).start(); print(owned.pid, reaped.pid)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    owned, reaped = map(int, done.stdout.split())
    with pytest.raises(ProcessLookupError):  # the default child was SIGKILLed at exit ...
        os.kill(reaped, 0)
    os.kill(owned, signal.SIGKILL)  # ... the owned one still runs (this raises if it does not)
