"""Large bodies travel through the lattice's JetStream object store (protocol spec §11).

The host moves a request body over its threshold into the object store bucket named after the
lattice prefix, under the invocation id, and sends the Invocation with an empty ``msg`` and the
real ``content_length``. The provider must fetch it, verify the claims against the fetched bytes,
and delete the object. A reply over 900 KiB goes the other way, under ``{id}-r``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.js.errors import NotFoundError

from contract.keyvalue import OPERATIONS, SetRequest
from contract.nkeys import KeyPair
from contract.wire import Invocation
from provider.rpc.chunking import MAX_CHUNKED_BYTES, encoded_meta_subject, raw_meta_subject
from wasmbus_testkit import KeyValueHost as FakeHost

BIG = 1_000_000  # over both the OTP host's and the SDK's chunking thresholds


async def _object_store(host: FakeHost):
    js = host.nc.jetstream()
    try:
        return await js.object_store(host.lattice)
    except NotFoundError:
        return await js.create_object_store(host.lattice)


async def _send_chunked(host: FakeHost, inv: Invocation) -> Invocation:
    """Do what the host does: store the body under the invocation id, send an empty msg."""
    store = await _object_store(host)
    await store.put(inv.id, inv.msg)
    return dataclasses.replace(inv, msg=b"", content_length=len(inv.msg))


async def test_chunked_request_body_is_fetched_verified_and_deleted(fake_host: FakeHost) -> None:
    value = "v" * BIG
    body = OPERATIONS["Set"].encode_input(SetRequest("chunky", value, 0))
    inv = await _send_chunked(fake_host, fake_host.invocation("KeyValue.Set", body))
    response = await fake_host.send(inv, timeout=15)
    assert response.error is None, response.error
    got = await fake_host.kv.get("chunky")
    assert (got.exists, len(got.value)) == (True, BIG)
    store = await _object_store(fake_host)
    with pytest.raises(NotFoundError):  # the provider deleted the object it consumed
        await store.get(inv.id)


async def test_chunked_body_is_checked_against_the_signed_hash(fake_host: FakeHost) -> None:
    """Claims cover the real body: a swapped object is refused and changes nothing."""
    signed = OPERATIONS["Set"].encode_input(SetRequest("chunk-guard", "a" * BIG, 0))
    inv = await _send_chunked(fake_host, fake_host.invocation("KeyValue.Set", signed))
    store = await _object_store(fake_host)
    forged = OPERATIONS["Set"].encode_input(SetRequest("chunk-guard", "b" * BIG, 0))
    await store.put(inv.id, forged)
    response = await fake_host.send(inv, timeout=15)
    assert response.error is not None
    assert response.error.startswith("Invocation hash does not match signed claims hash")
    assert (await fake_host.kv.get("chunk-guard")).exists is False


async def test_missing_chunked_body_is_an_error_reply(fake_host: FakeHost) -> None:
    inv = fake_host.invocation("KeyValue.Get", OPERATIONS["Get"].encode_input("x"))
    await _object_store(fake_host)
    response = await fake_host.send(dataclasses.replace(inv, msg=b"", content_length=5000))
    assert response.error is not None
    assert "chunked stream" in response.error


async def test_large_reply_is_stored_under_id_dash_r(fake_host: FakeHost) -> None:
    """A Get of a ~950 KB value answers with an empty msg and the real content_length; the
    body waits in the object store under ``{id}-r`` for the host to fetch."""
    value = "w" * 950_000
    body = OPERATIONS["Set"].encode_input(SetRequest("big-reply", value, 0))
    inv = await _send_chunked(fake_host, fake_host.invocation("KeyValue.Set", body))
    assert (await fake_host.send(inv, timeout=15)).error is None
    get = fake_host.invocation("KeyValue.Get", OPERATIONS["Get"].encode_input("big-reply"))
    response = await fake_host.send(get, timeout=15)
    assert response.error is None
    assert response.msg == b""
    assert response.content_length > 900 * 1024
    stored = await (await _object_store(fake_host)).get(f"{get.id}-r")
    decoded = OPERATIONS["Get"].decode_output(bytes(stored.data))
    assert (decoded.exists, decoded.value) == (True, value)


async def _put_raw_named(host: FakeHost, name: str, body: bytes) -> None:
    """Store an object the way the OTP host's NIF (sync ``nats`` crate) does: chunks under a
    fresh nuid, metadata under the raw name (not base64)."""
    await _object_store(host)  # make sure the bucket's stream exists
    js, bucket = host.nc.jetstream(), host.lattice
    nuid = uuid.uuid4().hex
    chunk = 128 * 1024
    for start in range(0, len(body), chunk):
        await js.publish(f"$O.{bucket}.C.{nuid}", body[start : start + chunk])
    digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).decode()
    meta = {
        "name": name,
        "bucket": bucket,
        "nuid": nuid,
        "size": len(body),
        "chunks": -(-len(body) // chunk),
        "digest": f"SHA-256={digest}",
    }
    await js.publish(raw_meta_subject(bucket, name), json.dumps(meta).encode())


async def test_request_body_stored_under_the_raw_name_is_found(fake_host: FakeHost) -> None:
    """The OTP host's NIF names objects raw; the provider looks there too, then purges it."""
    value = "r" * BIG
    body = OPERATIONS["Set"].encode_input(SetRequest("raw-named", value, 0))
    inv = fake_host.invocation("KeyValue.Set", body)
    await _put_raw_named(fake_host, inv.id, body)
    chunked = dataclasses.replace(inv, msg=b"", content_length=len(body))
    assert (await fake_host.send(chunked, timeout=15)).error is None
    assert len((await fake_host.kv.get("raw-named")).value) == BIG
    js = fake_host.nc.jetstream()
    with pytest.raises(NotFoundError):
        await js.get_last_msg(
            f"OBJ_{fake_host.lattice}", raw_meta_subject(fake_host.lattice, inv.id)
        )


async def test_large_reply_metadata_is_under_both_names(fake_host: FakeHost) -> None:
    body = OPERATIONS["Set"].encode_input(SetRequest("both-names", "z" * 950_000, 0))
    inv = await _send_chunked(fake_host, fake_host.invocation("KeyValue.Set", body))
    assert (await fake_host.send(inv, timeout=15)).error is None
    get = fake_host.invocation("KeyValue.Get", OPERATIONS["Get"].encode_input("both-names"))
    assert (await fake_host.send(get, timeout=15)).msg == b""
    js, bucket = fake_host.nc.jetstream(), fake_host.lattice
    raw = await js.get_last_msg(f"OBJ_{bucket}", raw_meta_subject(bucket, f"{get.id}-r"))
    encoded = await js.get_last_msg(f"OBJ_{bucket}", encoded_meta_subject(bucket, f"{get.id}-r"))
    assert json.loads(raw.data)["nuid"] == json.loads(encoded.data)["nuid"]


# -- claims before bodies, limits (issue #11 items 3 and 4) ----------------------------------

MIB = 1024 * 1024


def _provider_out_bytes(host: FakeHost) -> int:
    """Bytes the NATS server has delivered to the provider's lattice connection."""
    name = f"nats-kvcache {host.keys.provider.public_key}"
    connections = host.server.http_json("/connz?limit=1024")["connections"]
    return sum(c["out_bytes"] for c in connections if c.get("name") == name)


def _peak_rss_kib(host: FakeHost) -> int:
    with open(f"/proc/{host.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_chunked_calls_with_garbage_claims_download_nothing(fake_host: FakeHost) -> None:
    """16 chunked calls whose claims are garbage, forged, unsigned-by-us or for another target
    are refused with the claims error, and their bodies are never read: the server delivers
    the provider a few KiB instead of 32 MiB, its peak memory does not grow by the bodies,
    and every object is still in the store (a refused call deletes nothing either)."""
    host = fake_host
    store = await _object_store(host)
    body = OPERATIONS["Set"].encode_input(SetRequest("forged", "f" * (2 * MIB), 0))
    stranger = KeyPair.generate("cluster")
    calls: list[tuple[Invocation, str]] = []
    for i in range(16):
        inv = host.invocation("KeyValue.Set", body)
        kind = i % 4
        if kind == 0:
            inv = dataclasses.replace(inv, encoded_claims="garbage." * 3 + str(i))
            expected = "JWT error: invalid token format"
        elif kind == 1:  # a real token with someone else's signature bytes
            head, claims, _ = inv.encoded_claims.split(".")
            other = host.invocation("KeyValue.Get", b"\xa1x").encoded_claims.split(".")[2]
            inv = dataclasses.replace(inv, encoded_claims=f"{head}.{claims}.{other}")
            expected = "Invocation claims signature invalid"
        elif kind == 2:  # validly signed, by an issuer this lattice does not trust
            inv = host.invocation("KeyValue.Set", body, signer=stranger)
            expected = "Issuer of this invocation is not in list of cluster issuers"
        else:  # trusted, but for an actor without a link
            inv = host.invocation("KeyValue.Set", body, actor=KeyPair.generate("module"))
            expected = "unlinked actor: "
        await store.put(inv.id, body)
        calls.append((dataclasses.replace(inv, msg=b"", content_length=len(body)), expected))
    rss_before, sent_before = _peak_rss_kib(host), _provider_out_bytes(host)

    responses = await asyncio.gather(*(host.send(inv, timeout=15) for inv, _ in calls))

    for (inv, expected), response in zip(calls, responses, strict=True):
        assert response.error is not None and response.error.startswith(expected), response
        assert response.invocation_id == inv.id
    delivered = _provider_out_bytes(host) - sent_before
    assert delivered < 256 * 1024, f"{delivered} bytes delivered to the provider"
    assert _peak_rss_kib(host) - rss_before < 16 * 1024  # 16 bodies would be 32 MiB
    for inv, _ in calls:  # untouched
        assert (await store.get_info(inv.id)).size == len(body)
    assert (await host.kv.get("forged")).exists is False


async def test_sixteen_mib_value_round_trips_through_chunking(fake_host: FakeHost) -> None:
    """A 16 MiB Set and Get, both chunked, against a server with the default 1 MiB
    max_payload: the request body is fetched (and deleted), the reply is uploaded."""
    assert fake_host.server.http_json("/varz")["max_payload"] == MIB
    value = "".join(chr(ord("a") + i % 26) for i in range(4096)) * (16 * MIB // 4096)
    kv = fake_host.client_for(fake_host.keys.actor, timeout=15)
    await kv.set("sixteen", value)
    got = await kv.get("sixteen")
    assert got.exists and len(got.value) == 16 * MIB and got.value == value
    await kv.set("sixteen", "small again")  # the provider still serves small calls
    assert (await kv.get("sixteen")).value == "small again"
    info = await fake_host.nc.jetstream().stream_info(f"OBJ_{fake_host.lattice}")
    assert info.state.bytes < MIB  # every chunked body and reply was deleted


async def test_chunked_request_over_the_limit_is_refused_unread(fake_host: FakeHost) -> None:
    inv = fake_host.invocation("KeyValue.Get", OPERATIONS["Get"].encode_input("x"))
    await _object_store(fake_host)
    too_big = MAX_CHUNKED_BYTES + 1
    response = await fake_host.send(dataclasses.replace(inv, msg=b"", content_length=too_big))
    assert response.error is not None
    assert f"over the {MAX_CHUNKED_BYTES} byte limit" in response.error


async def test_large_chunked_set_in_replicated_mode_does_not_crash(
    fake_host_factory: Callable[..., Awaitable[FakeHost]],
) -> None:
    """Replication messages are at most 900 KiB: a 2 MiB value is stored and served locally,
    and the provider keeps running (it may log that the change is too large to replicate)."""
    host = await fake_host_factory(start=False)
    host.host_data.config_json = json.dumps({"NATS_URL": host.server.url})
    await host.start()
    kv = host.client_for(host.keys.actor, timeout=15)
    await kv.set("repl-big", "r" * (2 * MIB))
    assert len((await kv.get("repl-big")).value) == 2 * MIB
    await kv.set("repl-small", "ok")
    assert (await kv.get("repl-small")).value == "ok"
    assert host.process.is_running(), host.stderr()
    assert (await host.health()).healthy
