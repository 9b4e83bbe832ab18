"""Large bodies travel through the lattice's JetStream object store (protocol spec §11).

The host moves a request body over its threshold into the object store bucket named after the
lattice prefix, under the invocation id, and sends the Invocation with an empty ``msg`` and the
real ``content_length``. The provider must fetch it, verify the claims against the fetched bytes,
and delete the object. A reply over 900 KiB goes the other way, under ``{id}-r``.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import uuid

import pytest
from nats.js.errors import NotFoundError

from contract.keyvalue import OPERATIONS, SetRequest
from contract.wire import Invocation
from provider.chunking import encoded_meta_subject, raw_meta_subject
from tests.harness.fakehost import FakeHost

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
