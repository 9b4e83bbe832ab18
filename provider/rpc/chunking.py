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

Downloads cost memory, and anyone who can publish on the lattice can ask for one. So the caller
(:mod:`provider.rpc.invocations`) checks an invocation's claims before it asks for the body, and
:meth:`ChunkStore.request_body` bounds how many bodies are downloaded at once
(:data:`MAX_CONCURRENT_DOWNLOADS`) and how many bytes they may add up to
(:data:`MAX_IN_FLIGHT_BYTES`). Every wait on the server has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

log = structlog.get_logger("provider.rpc.chunking")

#: wasmbus-rpc >= 0.11 chunks replies strictly larger than 900 KiB.
RESPONSE_CHUNK_THRESHOLD = 900 * 1024

#: Largest chunked request body accepted: a 16 MiB value plus room for its key (at most
#: 16 KiB) and the msgpack framing. A larger one is refused without being fetched.
MAX_CHUNKED_BYTES = 16 * 1024 * 1024 + 64 * 1024
#: Chunked request bodies downloaded at the same time, at most.
MAX_CONCURRENT_DOWNLOADS = 4
#: The sum of the ``content_length`` of the bodies being downloaded (and decoded), at most.
MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024
#: How long a call waits for a download slot before it is refused as busy.
SLOT_WAIT_SECONDS = 5.0
#: Deadline for fetching one whole body (the host waits 15 s for a chunked call's reply).
FETCH_TIMEOUT_SECONDS = 10.0
#: Deadline for the next chunk of a body to arrive.
CHUNK_TIMEOUT_SECONDS = 5.0
#: Deadline for storing one large reply.
STORE_TIMEOUT_SECONDS = 10.0


def raw_meta_subject(bucket: str, name: str) -> str:
    """Where the OTP host's NIF keeps an object's metadata."""
    return f"$O.{bucket}.M.{name.replace('.', '_').replace(' ', '_')}"


def encoded_meta_subject(bucket: str, name: str) -> str:
    """Where nats-py / async-nats keep it (ADR-20)."""
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


class ChunkError(Exception):
    """The body could not be fetched or stored; the text is the reply's error."""


class _DownloadBudget:
    """At most ``slots`` downloads at once, adding up to at most ``max_bytes``."""

    def __init__(self, slots: int, max_bytes: int) -> None:
        self._slots = slots
        self._max_bytes = max_bytes
        self.active = 0
        self.bytes = 0
        self._waiters: list[asyncio.Future[None]] = []

    def _fits(self, size: int) -> bool:
        return self.active < self._slots and self.bytes + size <= self._max_bytes

    async def acquire(self, size: int, timeout: float) -> bool:
        """Reserve a slot and ``size`` bytes; False when none frees up within ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._fits(size):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            finally:
                self._waiters.remove(waiter)
        self.active += 1
        self.bytes += size
        return True

    def release(self, size: int) -> None:
        self.active -= 1
        self.bytes -= size
        for waiter in self._waiters:  # each re-checks whether it fits now
            if not waiter.done():
                waiter.set_result(None)


class ChunkStore:
    """Fetches and stores chunked bodies in the lattice object store."""

    def __init__(self, nc: NATS, lattice_prefix: str) -> None:
        self._nc = nc
        self._bucket = lattice_prefix
        self._stream = f"OBJ_{lattice_prefix}"
        self._store: ObjectStore | None = None
        self._budget = _DownloadBudget(MAX_CONCURRENT_DOWNLOADS, MAX_IN_FLIGHT_BYTES)
        #: Bodies downloaded so far (for tests and the status document).
        self.downloads = 0

    async def _object_store(self) -> ObjectStore:
        if self._store is None:
            js = self._nc.jetstream()
            try:
                self._store = await js.object_store(self._bucket)
            except NotFoundError:
                self._store = await js.create_object_store(self._bucket)
        return self._store

    # ------------------------------------------------------------------ request bodies
    @contextlib.asynccontextmanager
    async def request_body(self, invocation_id: str, content_length: int) -> AsyncIterator[bytes]:
        """The full request body, inside a download slot held until the block ends.

        Call this only for an invocation whose claims already passed: whoever gets here makes
        the provider download up to :data:`MAX_CHUNKED_BYTES`.
        """
        if content_length > MAX_CHUNKED_BYTES:
            raise ChunkError(
                f"nats: chunked request for inv {invocation_id} is {content_length} bytes, "
                f"over the {MAX_CHUNKED_BYTES} byte limit"
            )
        if not await self._budget.acquire(content_length, SLOT_WAIT_SECONDS):
            raise ChunkError(
                f"nats: too many chunked requests in flight; inv {invocation_id} not received"
            )
        try:
            yield await self.fetch_request(invocation_id, content_length)
        finally:
            self._budget.release(content_length)

    async def fetch_request(self, invocation_id: str, content_length: int) -> bytes:
        """The full request body for ``invocation_id``; the object is deleted afterwards."""
        if content_length > MAX_CHUNKED_BYTES:
            raise ChunkError(
                f"nats: chunked request for inv {invocation_id} is {content_length} bytes, "
                f"over the {MAX_CHUNKED_BYTES} byte limit"
            )
        try:
            return await asyncio.wait_for(
                self._fetch(invocation_id, content_length), FETCH_TIMEOUT_SECONDS
            )
        except ChunkError:
            raise
        except Exception as error:  # any JetStream failure is an answer, not a crash
            text = _failure_text(error, FETCH_TIMEOUT_SECONDS)
            raise ChunkError(
                f"nats: error starting to receive chunked stream for inv {invocation_id}: {text}"
            ) from None

    async def _fetch(self, name: str, content_length: int) -> bytes:
        js = self._nc.jetstream()
        meta_msg = None
        for meta_subject in (
            encoded_meta_subject(self._bucket, name),
            raw_meta_subject(self._bucket, name),
        ):
            try:
                meta_msg = await js.get_last_msg(self._stream, meta_subject)
                break
            except NotFoundError:
                continue
        meta = json.loads(meta_msg.data or b"{}") if meta_msg is not None else {}
        if not meta or meta.get("deleted"):
            raise ChunkError(
                f"nats: error starting to receive chunked stream for inv {name}: object not found"
            )
        size, nuid = int(meta.get("size") or 0), str(meta["nuid"])
        if size > content_length:
            raise ChunkError(
                f"nats: chunked request for inv {name} is {size} bytes, "
                f"but its content_length is {content_length}"
            )
        chunk_subject = f"$O.{self._bucket}.C.{nuid}"
        body = await self._read_chunks(chunk_subject, size) if size else b""
        digest = str(meta.get("digest") or "")
        if digest.upper().startswith("SHA-256="):
            expected = base64.urlsafe_b64decode(digest[8:] + "=" * (-len(digest[8:]) % 4))
            if hashlib.sha256(body).digest() != expected:
                raise ChunkError(f"nats: chunked request for inv {name} does not match its digest")
        self.downloads += 1
        for subject in (chunk_subject, meta_subject):  # consumed: delete it (spec §11)
            try:
                await js.purge_stream(self._stream, subject=subject)
            except Exception as error:  # a failed delete is only worth a log line (spec)
                log.warning("chunked request object not deleted", inv=name, error=str(error))
        return body

    async def _read_chunks(self, subject: str, size: int) -> bytes:
        body = bytearray()
        sub = await self._nc.jetstream().subscribe(
            subject, stream=self._stream, ordered_consumer=True
        )
        try:
            while len(body) < size:
                body += (await sub.next_msg(timeout=CHUNK_TIMEOUT_SECONDS)).data
                if len(body) > size:
                    raise ChunkError(f"chunked object on {subject} is larger than its metadata")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return bytes(body)

    # ------------------------------------------------------------------ large replies
    async def store_response(self, invocation_id: str, body: bytes) -> None:
        """Put a large reply where the host will look for it (``{id}-r``)."""
        try:
            await asyncio.wait_for(self._put_response(invocation_id, body), STORE_TIMEOUT_SECONDS)
        except Exception as error:
            text = _failure_text(error, STORE_TIMEOUT_SECONDS)
            raise ChunkError(
                f"nats: error storing chunked response for inv {invocation_id}: {text}"
            ) from None

    async def _put_response(self, invocation_id: str, body: bytes) -> None:
        name = f"{invocation_id}-r"
        store = await self._object_store()
        await store.put(name, body)  # 128 KiB chunks: each fits any server's max_payload
        js = self._nc.jetstream()
        meta = await js.get_last_msg(self._stream, encoded_meta_subject(self._bucket, name))
        await js.publish(  # the same metadata under the raw name, for the OTP host's NIF
            raw_meta_subject(self._bucket, name), meta.data or b"", headers={"Nats-Rollup": "sub"}
        )


def _failure_text(error: Exception, timeout: float) -> str:
    """What went wrong with an object-store transfer, for the actor's error text."""
    if isinstance(error, TimeoutError | asyncio.TimeoutError):
        return f"timed out after {timeout:.0f}s"
    return str(error) or type(error).__name__
