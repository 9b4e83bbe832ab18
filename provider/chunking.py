"""Large invocation bodies travel through the lattice's JetStream object store (spec §11).

A request whose ``content_length`` exceeds ``len(msg)`` has its body in the object store bucket
named after the lattice prefix, under the invocation id; a reply larger than
:data:`RESPONSE_CHUNK_THRESHOLD` is stored under ``{id}-r`` for the host to fetch. Key-value
payloads this large are rare, so the store is opened lazily on first use.

Two names for one object (spec §11, unconfirmed against a live host): nats-py and async-nats
put an object's metadata at ``$O.{bucket}.M.{base64url(name)}``, while the OTP host's NIF (the
synchronous ``nats`` crate) uses the raw name with ``.`` and spaces turned into ``_``. So a
request body is looked up under both, and a large reply's metadata is written under both,
pointing at the same chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError, ObjectNotFoundError

log = structlog.get_logger("provider.chunking")

#: wasmbus-rpc >= 0.11 chunks replies strictly larger than 900 KiB.
RESPONSE_CHUNK_THRESHOLD = 900 * 1024

#: A chunked request larger than this is refused without being fetched.
MAX_CHUNKED_BYTES = 16 * 1024 * 1024


def raw_meta_subject(bucket: str, name: str) -> str:
    """Where the OTP host's NIF keeps an object's metadata."""
    return f"$O.{bucket}.M.{name.replace('.', '_').replace(' ', '_')}"


def encoded_meta_subject(bucket: str, name: str) -> str:
    """Where nats-py / async-nats keep it (ADR-20)."""
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class ChunkError(Exception):
    """The body could not be fetched or stored; the text is the reply's error."""


class ChunkStore:
    """Fetches and stores chunked bodies in the lattice object store."""

    def __init__(self, nc: NATS, lattice_prefix: str) -> None:
        self._nc = nc
        self._bucket = lattice_prefix
        self._store = None

    async def _object_store(self):
        if self._store is None:
            js = self._nc.jetstream()
            try:
                self._store = await js.object_store(self._bucket)
            except NotFoundError:
                self._store = await js.create_object_store(self._bucket)
        return self._store

    async def fetch_request(self, invocation_id: str, content_length: int) -> bytes:
        """The full request body for ``invocation_id``; the object is deleted afterwards."""
        if content_length > MAX_CHUNKED_BYTES:
            raise ChunkError(
                f"nats: chunked request for inv {invocation_id} is {content_length} bytes, "
                f"over the {MAX_CHUNKED_BYTES} byte limit"
            )
        try:
            store = await self._object_store()
            try:
                body = bytes((await store.get(invocation_id)).data or b"")
            except ObjectNotFoundError:
                body = await self._fetch_raw_named(invocation_id)
                store = None  # deleted by _fetch_raw_named
        except Exception as error:  # any JetStream failure is an answer, not a crash
            raise ChunkError(
                f"nats: error starting to receive chunked stream for inv {invocation_id}: {error}"
            ) from None
        if store is not None:
            try:
                await store.delete(invocation_id)
            except Exception as error:  # a failed delete is only worth a log line (spec)
                log.warning(
                    "chunked request object not deleted", inv=invocation_id, error=str(error)
                )
        return body

    async def _fetch_raw_named(self, name: str) -> bytes:
        """Read (then purge) an object whose metadata sits under its raw name."""
        js, stream = self._nc.jetstream(), f"OBJ_{self._bucket}"
        meta_subject = raw_meta_subject(self._bucket, name)
        try:
            meta = json.loads((await js.get_last_msg(stream, meta_subject)).data)
        except NotFoundError:
            raise ObjectNotFoundError() from None
        size, nuid = int(meta.get("size") or 0), str(meta["nuid"])
        if size > MAX_CHUNKED_BYTES:
            raise ChunkError(f"object {name} is {size} bytes, over the limit")
        chunk_subject = f"$O.{self._bucket}.C.{nuid}"
        body = bytearray()
        if size:
            sub = await js.subscribe(chunk_subject, ordered_consumer=True)
            try:
                while len(body) < size:
                    body += (await sub.next_msg(timeout=5)).data
            finally:
                await sub.unsubscribe()
        digest = str(meta.get("digest") or "")
        if digest.upper().startswith("SHA-256="):
            expected = base64.urlsafe_b64decode(digest[8:] + "=" * (-len(digest[8:]) % 4))
            if hashlib.sha256(body).digest() != expected:
                raise ChunkError(f"object {name} does not match its digest")
        for subject in (chunk_subject, meta_subject):
            try:
                await js.purge_stream(stream, subject=subject)
            except Exception as error:
                log.warning("chunked object not deleted", inv=name, error=str(error))
        return bytes(body)

    async def store_response(self, invocation_id: str, body: bytes) -> None:
        """Put a large reply where the host will look for it (``{id}-r``)."""
        name = f"{invocation_id}-r"
        try:
            store = await self._object_store()
            await store.put(name, body)
            js, stream = self._nc.jetstream(), f"OBJ_{self._bucket}"
            meta = await js.get_last_msg(stream, encoded_meta_subject(self._bucket, name))
            await js.publish(  # the same metadata under the raw name, for the OTP host's NIF
                raw_meta_subject(self._bucket, name), meta.data, headers={"Nats-Rollup": "sub"}
            )
        except Exception as error:
            raise ChunkError(
                f"nats: error storing chunked response for inv {invocation_id}: {error}"
            ) from None
