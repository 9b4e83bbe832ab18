"""Process lifecycle: start-up line, links, health, shutdown and logging (protocol spec §2-§14).

Every test launches its own provider process the way a host does (one HostData line on stdin,
stdin left open) and talks to it over a real nats-server, in OTP style or in the test harness'
"test mode".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from contract.client import KeyValueError
from contract.codec import pack
from contract.keyvalue import GetResponse
from contract.nkeys import KeyPair
from contract.wire import HostData
from tests.harness.replicas import Replica, ReplicaSet, gather_limited
from wasmbus_testkit import FaultProxy, NatsServer, ProviderProcess, wait_for
from wasmbus_testkit import KeyValueHost as FakeHost

HostFactory = Callable[..., Awaitable[FakeHost]]

SHUTDOWN_ACK = b"shutting down"


async def assert_still_serving(host: FakeHost) -> None:
    """Process running, health answered and healthy, and a Set/Get round trip works."""
    assert host.process is not None and host.process.is_running(), host.stderr()
    assert (await host.health()).healthy
    await host.kv.set("lifecycle:alive", "yes")
    assert await host.kv.get("lifecycle:alive") == GetResponse("yes", True)


async def wait_for_log(host: FakeHost, text: str, timeout: float = 5.0) -> None:
    await wait_for(lambda: text in host.stderr(), timeout, message=f"log line {text!r}")


# -- links -----------------------------------------------------------------------------------


async def test_links_from_host_data_work_immediately(fake_host_factory: HostFactory) -> None:
    """Actors listed in HostData.link_definitions may call as soon as health passes, without
    any ``linkdefs.put``."""
    host = await fake_host_factory(start=False)
    second = KeyPair.generate("module")
    host.host_data.link_definitions.append(host.link_definition(second, {"k": "v"}))
    await host.start()
    await host.kv.set("lifecycle:start-link", "one")
    assert await host.client_for(second).get("lifecycle:start-link") == GetResponse("one", True)


async def test_actor_not_in_host_data_is_unlinked_until_linkdefs_put(
    fake_host_factory: HostFactory,
) -> None:
    """Without start-up links every call is refused; a ``linkdefs.put`` enables the actor."""
    host = await fake_host_factory(link_actor_at_start=False)
    actor = host.keys.actor.public_key
    with pytest.raises(KeyValueError, match=f"^unlinked actor: '{actor}'$"):
        await host.kv.get("lifecycle:k")
    await host.link(actor)
    assert await host.kv.get("lifecycle:k") == GetResponse("", False)


@pytest.mark.parametrize("test_mode", [False, True], ids=["otp-msgpack", "test-mode-json"])
async def test_duplicate_link_puts_are_ignored_even_with_different_values(
    fake_host_factory: HostFactory, test_mode: bool
) -> None:
    """A put for an actor already linked (at start or by put) is ignored, whatever its values:
    the log says so and a single del still unlinks the actor."""
    host = await fake_host_factory(test_mode=test_mode, log_level="debug", link_values={"a": "1"})
    actor = host.keys.actor
    await host.link(actor, {"a": "2"})
    await host.link(actor, {"a": "3", "extra": "x"})
    await wait_for_log(host, "duplicate link ignored")
    assert host.stderr().count("duplicate link ignored") == 2
    await host.kv.set("lifecycle:dup", "ok")

    await host.unlink(actor)  # one del is enough: the duplicates were never recorded
    assert not await host.is_linked(actor)


async def test_link_del_makes_calls_fail_with_unlinked(fake_host: FakeHost) -> None:
    """After ``linkdefs.del`` calls fail with ``unlinked actor``; a repeated del is harmless;
    a new put links the actor again and the data is still there."""
    kv = fake_host.kv
    actor = fake_host.keys.actor.public_key
    await kv.set("lifecycle:del", "kept")
    await fake_host.unlink(actor)
    with pytest.raises(KeyValueError, match=f"^unlinked actor: '{actor}'$"):
        await kv.get("lifecycle:del")
    with pytest.raises(KeyValueError, match=r"^unlinked actor"):
        await kv.set("lifecycle:del", "overwritten")

    await fake_host.unlink(actor)  # duplicate delete
    await fake_host.unlink(KeyPair.generate("module"))  # delete of an unknown actor
    await fake_host.link(actor)
    assert await kv.get("lifecycle:del") == GetResponse("kept", True)


async def test_undecodable_link_messages_are_dropped(fake_host: FakeHost) -> None:
    """Garbage on linkdefs.put/del is logged and dropped; links stay as they were."""
    subjects = fake_host.subjects
    for payload in [b"", b"\xc1", pack({"actor_id": fake_host.keys.actor.public_key}), b"{}"]:
        await fake_host.publish(subjects.link_put, payload)
        await fake_host.publish(subjects.link_del, payload)
    await wait_for_log(fake_host, "undecodable link deletion dropped")
    await assert_still_serving(fake_host)


# -- health ----------------------------------------------------------------------------------


async def test_health_reply_is_msgpack_healthy_true(fake_host: FakeHost) -> None:
    """OTP mode: the reply is exactly msgpack ``{"healthy": true}``, whatever the request body."""
    expected = bytes.fromhex("81a76865616c746879c3")
    assert await fake_host.health_raw() == expected
    assert await fake_host.health_raw(body=b"") == expected
    assert await fake_host.health_raw(body=b"\xc1 garbage") == expected


async def test_health_reply_is_json_in_test_mode(fake_host_factory: HostFactory) -> None:
    """Test mode: the reply is compact JSON ``{"healthy":true}``."""
    host = await fake_host_factory(test_mode=True)
    assert await host.health_raw() == b'{"healthy":true}'
    assert (await host.health()).healthy is True


async def test_health_request_without_reply_subject_is_ignored(fake_host: FakeHost) -> None:
    """A plain publish on the health subject gets no answer and breaks nothing."""
    for _ in range(3):
        await fake_host.publish(fake_host.subjects.health, b"")
    await assert_still_serving(fake_host)


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_without_reply_subject_is_ignored(fake_host: FakeHost) -> None:
    """(a) A shutdown message without a reply subject is ignored: the process keeps serving."""
    await fake_host.shutdown(with_reply=False)
    await fake_host.shutdown(host_id=None, with_reply=False)
    await assert_still_serving(fake_host)
    await asyncio.sleep(0.2)  # nothing to wait for: give a wrong exit the chance to happen
    await assert_still_serving(fake_host)


async def test_shutdown_for_another_host_is_ignored(fake_host_factory: HostFactory) -> None:
    """(b) ``{"host_id": <another host>}`` is for another instance: no reply, keeps serving."""
    host = await fake_host_factory(log_level="debug")
    other = KeyPair.generate("server").public_key
    with pytest.raises(NatsTimeoutError):
        await host.shutdown(host_id=other, timeout=0.5)
    await wait_for_log(host, "shutdown for another host ignored")
    await assert_still_serving(host)


@pytest.mark.parametrize(
    ("test_mode", "body"),
    [
        (False, None),
        (True, None),
        (False, b""),
        (False, b"not json"),
        (False, b'{"host_id": 42}'),
        (False, b"[1, 2]"),
    ],
    ids=[
        "c-own-host-id",
        "c-own-host-id-test-mode",
        "d-empty-body",
        "e-not-json",
        "e-host-id-not-a-string",
        "e-not-an-object",
    ],
)
async def test_shutdown_acknowledges_and_exits_zero(
    fake_host_factory: HostFactory, test_mode: bool, body: bytes | None
) -> None:
    """(c) own host id, (d) empty body (hosts < 0.59), (e) unparseable body (host id ""):
    reply ``shutting down`` and exit with status 0."""
    host = await fake_host_factory(test_mode=test_mode)
    await host.kv.set("lifecycle:bye", "x")
    assert await host.shutdown(body=body) == SHUTDOWN_ACK
    assert await host.wait_exit(10) == 0


async def test_sigterm_shuts_down_cleanly_with_exit_zero(fake_host: FakeHost) -> None:
    """``docker stop`` sends SIGTERM: the provider cleans up and exits 0 instead of dying."""
    await fake_host.kv.set("lifecycle:term", "x")
    fake_host.process.terminate()
    assert await fake_host.wait_exit(10) == 0
    assert "signal received; shutting down" in fake_host.stderr()


# -- start-up line ---------------------------------------------------------------------------


def _needs_padding(host_data: HostData) -> None:
    """Grow the HostData JSON until its base64 form needs ``=`` padding."""
    filler = 0
    while len(host_data.to_json()) % 3 == 0:
        filler += 1
        host_data.env_values = {"pad": "x" * filler}


@pytest.mark.parametrize(
    ("test_mode", "padded"),
    [(False, True), (True, False), (False, False), (True, True)],
    ids=["otp-padded-lf", "harness-unpadded-crlf", "otp-unpadded-crlf", "harness-padded-lf"],
)
async def test_both_stdin_line_styles_start_the_provider(
    fake_host_factory: HostFactory, test_mode: bool, padded: bool
) -> None:
    """Padded base64 + LF (OTP host) and unpadded base64 + CRLF (test harness) both work."""
    host = await fake_host_factory(start=False, test_mode=test_mode, padded=padded)
    _needs_padding(host.host_data)
    line = host.stdin_line
    if padded:
        assert line.endswith(b"=\n") and not line.endswith(b"\r\n")
    else:
        assert line.endswith(b"\r\n") and b"=" not in line
    await host.start()
    await host.kv.set("lifecycle:line", "ok")
    assert await host.kv.get("lifecycle:line") == GetResponse("ok", True)


async def _exit_of(
    provider_factory: Callable[..., ProviderProcess], line: bytes
) -> tuple[int, str]:
    process = provider_factory(line)
    code = await process.wait_async(15)
    return code, process.stderr_text()


@pytest.mark.parametrize("line", [b"\n", b"\r\n", b"   \t\n"], ids=["lf", "crlf", "blank"])
async def test_empty_stdin_line_exits_nonzero_with_message(
    provider_factory: Callable[..., ProviderProcess], line: bytes
) -> None:
    """An empty first line is fatal: non-zero exit and the SDK's message on stderr."""
    code, stderr = await _exit_of(provider_factory, line)
    assert code != 0
    assert "stdin is empty - expecting host data configuration" in stderr


@pytest.mark.parametrize("missing", ["env_values", "link_definitions", "cluster_issuers"])
async def test_host_data_missing_required_key_exits_nonzero(
    provider_factory: Callable[..., ProviderProcess], missing: str
) -> None:
    """A HostData document without one of the keys the Rust decoder requires is fatal."""
    document = HostData(host_id="N", lattice_rpc_url="127.0.0.1:1").to_dict()
    del document[missing]
    line = base64.b64encode(json.dumps(document).encode()) + b"\n"
    code, stderr = await _exit_of(provider_factory, line)
    assert code != 0
    assert missing in stderr


@pytest.mark.parametrize(
    "line",
    [b"%%% not base64 %%%\n", base64.b64encode(b"{not json") + b"\n", base64.b64encode(b"[]")],
    ids=["not-base64", "not-json", "not-an-object"],
)
async def test_unusable_host_data_exits_nonzero(
    provider_factory: Callable[..., ProviderProcess], line: bytes
) -> None:
    """A line that is not base64 of a JSON object is fatal, with a message on stderr."""
    code, stderr = await _exit_of(provider_factory, line)
    assert code != 0
    assert stderr.strip()


@pytest.mark.parametrize(
    ("field", "value"),
    [("lattice_rpc_prefix", ""), ("lattice_rpc_prefix", "*"), ("link_name", ">"),
     ("link_name", ""), ("lattice_rpc_prefix", "a.*")],
)  # fmt: skip
async def test_wildcard_or_empty_names_are_refused_at_start(
    provider_factory: Callable[..., ProviderProcess], field: str, value: str
) -> None:
    """A wildcard lattice prefix would subscribe to every lattice's calls: refused, clearly."""
    names = {"lattice_rpc_prefix": "default", "link_name": "default", field: value}
    document = HostData(host_id="N", lattice_rpc_url="127.0.0.1:1", **names).to_dict()
    line = base64.b64encode(json.dumps(document).encode()) + b"\n"
    code, stderr = await _exit_of(provider_factory, line)
    assert code == 1
    assert f"{field} {value!r} cannot name NATS subjects" in stderr


# -- logging ---------------------------------------------------------------------------------


async def _exercise(host: FakeHost) -> list[str]:
    """Make accepted and refused calls, link changes and a shutdown; return every token sent."""
    tokens = []
    stranger = KeyPair.generate("module")
    await host.link(stranger, {"note": "some value"})
    for inv in [
        host.invocation("KeyValue.Set", pack({"key": "log:k", "value": "v", "expires": 0})),
        host.invocation("KeyValue.Get", pack("log:k")),
        host.invocation("KeyValue.Get", pack("log:k"), signer=KeyPair.generate("cluster")),
        host.invocation("KeyValue.Get", pack("log:k"), actor=KeyPair.generate("module")),
        host.invocation("KeyValue.Nope", pack("log:k")),
        host.invocation("KeyValue.Increment", pack({"key": "log:k", "value": 1})),
    ]:
        tokens.append(inv.encoded_claims)
        await host.send(inv)
    tampered = host.invocation("KeyValue.Get", pack("log:k"))
    tampered.msg = pack("log:other")
    tokens.append(tampered.encoded_claims)
    await host.send(tampered)
    await host.unlink(stranger)
    assert await host.shutdown() == SHUTDOWN_ACK
    assert await host.wait_exit(10) == 0
    return tokens


async def test_structured_logging_writes_one_json_object_per_line(
    fake_host_factory: HostFactory,
) -> None:
    """``structured_logging: true`` → every stderr line is a JSON object (with a level)."""
    host = await fake_host_factory(structured_logging=True, log_level="debug")
    await _exercise(host)
    lines = [line for line in host.stderr().splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        record: Any = json.loads(line)
        assert isinstance(record, dict), line
        assert "level" in record


@pytest.mark.parametrize("structured", [False, True], ids=["text", "json"])
async def test_logs_never_contain_seeds_or_jwts(
    fake_host_factory: HostFactory, structured: bool
) -> None:
    """At debug level, neither the invocation seed nor any claims token (or either of its
    signed segments) appears on stderr or stdout."""
    host = await fake_host_factory(structured_logging=structured, log_level="debug")
    tokens = await _exercise(host)
    assert host.process is not None
    output = host.stderr() + host.process.stdout_text()
    assert "debug" in output.lower()  # debug logging really was on
    secrets = {"invocation seed": host.issuer.seed}
    for token in tokens:
        _head, claims, signature = token.split(".")
        secrets[f"token {claims[:12]}"] = token
        secrets[f"claims segment {claims[:12]}"] = claims
        secrets[f"signature {signature[:12]}"] = signature
    leaked = [name for name, secret in secrets.items() if secret in output]
    assert not leaked


# -- clean exits in every state (issue #11 item 5) -------------------------------------------

EXIT_WITHIN = 2.0  # seconds, from SIGTERM or the shutdown request to the process being gone


async def _exit_time(host: FakeHost, started: float) -> tuple[int, float]:
    code = await host.wait_exit(10)
    return code, time.monotonic() - started


@pytest.mark.parametrize("server", ["blackholed", "real"])
async def test_sigterm_during_start_up_exits_zero_within_two_seconds(
    fake_host_factory: HostFactory, server: str
) -> None:
    """A SIGTERM while the provider is still connecting is not lost: exit 0, quickly. With a
    server that accepts TCP but never speaks NATS, start-up would otherwise hang in connect."""
    host = await fake_host_factory(start=False)
    with socket.socket() as blackhole:
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(16)  # the kernel completes handshakes; nobody ever answers
        if server == "blackholed":
            host.host_data.lattice_rpc_url = f"127.0.0.1:{blackhole.getsockname()[1]}"
        await host.start(wait_healthy=False)
        await wait_for_log(host, "Starting capability provider", timeout=10)
        started = time.monotonic()
        host.process.terminate()
        code, elapsed = await _exit_time(host, started)
    assert code == 0, host.stderr()
    assert elapsed < EXIT_WITHIN, f"exit took {elapsed:.2f}s"
    assert "signal received; shutting down" in host.stderr()
    assert "fatal" not in host.stderr()


@pytest.mark.parametrize(
    "replication", [None, "nats", "jetstream"], ids=["standalone", "nats", "jetstream"]
)
async def test_sigterm_with_the_nats_server_gone_exits_zero(
    fake_host_factory: HostFactory, nats_server: NatsServer, replication: str | None
) -> None:
    """The lattice server died: a SIGTERM still ends in a clean exit 0 (this used to be
    ``fatal: RuntimeError … handler is closed``, exit 1). Standalone, and replicating through
    the same server in either mode, so that both connections are lost at once."""
    config = None
    if replication is not None:
        values = {"NATS_URL": nats_server.url, "REPLICATION": replication, "CACHE_PREFIX": "gone"}
        config = json.dumps(values)
    fake_host = await fake_host_factory(config_json=config)

    async def durable_set() -> bool:
        await fake_host.kv.set("lifecycle:gone", "x")
        return True

    await wait_for(durable_set, 10, message="a Set")
    fake_host.server.kill()
    await wait_for_log(fake_host, "lattice connection lost")
    started = time.monotonic()
    fake_host.process.terminate()
    code, elapsed = await _exit_time(fake_host, started)
    assert code == 0, fake_host.stderr()
    assert elapsed < EXIT_WITHIN, f"exit took {elapsed:.2f}s"
    assert "fatal" not in fake_host.stderr()


async def test_shutdown_request_with_calls_in_flight_exits_zero_quickly(
    fake_host: FakeHost,
) -> None:
    """A shutdown request while calls keep arriving: ack, then exit 0 within 2 s."""
    kv = fake_host.kv
    await kv.set("lifecycle:busy", "x")
    stop = asyncio.Event()

    async def keep_calling() -> None:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                await fake_host.client_for(fake_host.keys.actor, timeout=0.5).get("lifecycle:busy")

    callers = [asyncio.create_task(keep_calling()) for _ in range(8)]
    try:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        assert await fake_host.shutdown() == SHUTDOWN_ACK
        code, elapsed = await _exit_time(fake_host, started)
    finally:
        stop.set()
        await asyncio.gather(*callers)
    assert code == 0, fake_host.stderr()
    assert elapsed < EXIT_WITHIN, f"exit took {elapsed:.2f}s"


async def test_sigterm_during_a_stalled_jetstream_write_exits_zero(
    fake_host_factory: HostFactory, fault_proxy: FaultProxy
) -> None:
    """JetStream mode, and the replication server stops answering while a Set waits for its
    write to be acknowledged: a SIGTERM still ends in exit 0 within 2 s."""
    values = {"NATS_URL": fault_proxy.url, "REPLICATION": "jetstream", "CACHE_PREFIX": "lcjs"}
    host = await fake_host_factory(start=False, config_json=json.dumps(values))
    await host.start()

    async def durable_set() -> bool:
        await host.kv.set("lifecycle:js", "stored")
        return True

    await wait_for(durable_set, 10, message="a durable set")
    fault_proxy.stall()
    writer = asyncio.create_task(host.client_for(host.keys.actor, timeout=5).set("js:b", "v"))
    await asyncio.sleep(0.3)  # the write is now waiting for an acknowledgement
    assert not writer.done()
    started = time.monotonic()
    host.process.terminate()
    code, elapsed = await _exit_time(host, started)
    fault_proxy.heal()
    with contextlib.suppress(Exception):
        await writer
    assert code == 0, host.stderr()
    assert elapsed < EXIT_WITHIN, f"exit took {elapsed:.2f}s"
    assert "fatal" not in host.stderr()


# -- SIGTERM in the middle of a replay -------------------------------------------------------

#: One way, on the joining instances' replication path. In plain NATS mode every snapshot chunk
#: request then takes at least 0.3 s, so a few MB of state keeps them replaying for seconds
#: (0.15 s stays well under the 1 s a joining instance waits for a snapshot offer). A JetStream
#: replay streams records without waiting for each, so it needs a slower link to last.
REPLAY_LATENCY = {"nats": 0.15, "jetstream": 0.4}
REPLAY_KEYS = 240
REPLAY_VALUE = "v" * 16_384  # ~4 MB in all: 15+ chunks of the 256 KB the seed sends at a time
#: What each mode logs as its replay begins (a snapshot offer taken, the stream found), and
#: once it is done: every joiner must have logged the first, none the second.
REPLAY_BEGUN = {"nats": "replaying snapshot", "jetstream": "using existing lattice cache stream"}
REPLAY_DONE = {"nats": "replay complete", "jetstream": "stream replay complete"}


@pytest.mark.parametrize("mode", ["nats", "jetstream"])
async def test_sigterm_mid_replay_exits_zero_on_every_instance(
    replicas: ReplicaSet, fault_proxy: FaultProxy, mode: str
) -> None:
    """Four instances join while a ~4 MB state is replayed to them through a slow link (a
    seed's snapshot, or the JetStream stream), and each gets a SIGTERM at a different point of
    its replay, most probably with a request in flight: each exits 0 within two seconds (this
    used to hang: a stop lost its cancellation inside the pending request). Each had logged the
    start of its replay but not its end, and said "replaying" in health, when it was signalled:
    the signal really met a replay in progress."""
    tag = uuid.uuid4().hex[:8]

    def values(url: str) -> dict[str, str]:
        return {
            "NATS_URL": url,
            "REPLICATION": mode,
            "CACHE_PREFIX": f"term-{tag}",
            "STATE_REPL_SUBJECT": f"term.{tag}.events",
            "REPLAY_REQ_SUBJECT": f"term.{tag}.replay",
        }

    seed = replicas.add("seed", values(replicas.lattice_url))
    await replicas.start(seed)
    await gather_limited(
        (seed.client.set(f"big:{i}", REPLAY_VALUE) for i in range(REPLAY_KEYS)), limit=16
    )
    fault_proxy.latency(REPLAY_LATENCY[mode])
    joiners = [replicas.add(f"join{i}", values(fault_proxy.url)) for i in range(4)]
    await replicas.start(*joiners, ready=False)

    async def replaying(replica: Replica) -> bool:
        if REPLAY_BEGUN[mode] not in replica.log_text():
            return False
        return "replaying" in ((await replica.health(timeout=0.5)).message or "")

    async def terminate_mid_replay(replica: Replica, delay: float) -> tuple[int, float, str]:
        await wait_for(lambda: replaying(replica), timeout=15, message=f"{replica.name} to replay")
        await asyncio.sleep(delay)
        assert replica.proc is not None
        started = time.monotonic()
        replica.proc.terminate()
        code = await replica.proc.wait_async(10)
        return code, time.monotonic() - started, replica.log_text()

    results = await asyncio.gather(
        *(terminate_mid_replay(r, 0.4 * i) for i, r in enumerate(joiners))
    )
    for replica, (code, elapsed, log) in zip(joiners, results, strict=True):
        assert REPLAY_DONE[mode] not in log, f"{replica.name} finished its replay first"
        assert code == 0, f"{replica.name} exited {code}:\n{log[-3000:]}"
        assert elapsed < EXIT_WITHIN, f"{replica.name} took {elapsed:.2f}s to exit"
        assert "fatal" not in log, log[-3000:]
