"""Large invocation bodies travel through the lattice's JetStream object store (spec §11).

A request whose ``content_length`` exceeds ``len(msg)`` has its body in the object store bucket
named after the lattice prefix, under the invocation id; a reply larger than
:data:`RESPONSE_CHUNK_THRESHOLD` is stored under ``{id}-r`` for the host to fetch. Key-value
payloads this large are rare, so the store is opened lazily on first use.
"""

from __future__ import annotations

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

log = structlog.get_logger("provider.chunking")

#: wasmbus-rpc >= 0.11 chunks replies strictly larger than 900 KiB.
RESPONSE_CHUNK_THRESHOLD = 900 * 1024

#: A chunked request larger than this is refused without being fetched.
MAX_CHUNKED_BYTES = 16 * 1024 * 1024


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
            result = await store.get(invocation_id)
        except Exception as error:  # any JetStream failure is an answer, not a crash
            raise ChunkError(
                f"nats: error starting to receive chunked stream for inv {invocation_id}: {error}"
            ) from None
        try:
            await store.delete(invocation_id)
        except Exception as error:  # a failed delete is only worth a log line, per the spec
            log.warning("chunked request object not deleted", inv=invocation_id, error=str(error))
        return bytes(result.data or b"")

    async def store_response(self, invocation_id: str, body: bytes) -> None:
        """Put a large reply where the host will look for it (``{id}-r``)."""
        try:
            store = await self._object_store()
            await store.put(f"{invocation_id}-r", body)
        except Exception as error:
            raise ChunkError(
                f"nats: error storing chunked response for inv {invocation_id}: {error}"
            ) from None
