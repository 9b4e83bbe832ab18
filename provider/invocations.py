"""The RPC path: one Invocation in, one InvocationResponse out (protocol spec §6).

Steps, in the spec's order: decode the envelope, fetch a chunked body, validate the claims, check
issuer / target / link, dispatch, reply. Every request that has a reply subject gets a decodable
InvocationResponse, whatever it contained; a refused call changes nothing.

This is the product's hot path (see ``bench/rpc.py``): no per-call allocation beyond what the
envelope needs, and claims are verified on every single call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog

from contract.claims import (
    ClaimsError,
    issuer_not_trusted_error,
    target_mismatch_error,
    unlinked_actor_error,
    validate_invocation,
)
from contract.codec import DecodeError
from contract.keyvalue import ArgumentError, UnknownOperationError, resolve_operation
from contract.wire import HostData, Invocation, InvocationResponse
from provider.chunking import RESPONSE_CHUNK_THRESHOLD, ChunkError, ChunkStore
from provider.kvservice import execute
from provider.links import LinkRegistry
from provider.metrics import Metrics
from provider.replication.base import ReplicationError
from provider.store import Change, KeyValueStore, StoreError

log = structlog.get_logger("provider.invocations")

#: Refusals whose text goes back to the actor as-is.
_REFUSALS = (
    ClaimsError,
    UnknownOperationError,
    ArgumentError,
    StoreError,
    ChunkError,
    ReplicationError,
)


class _Refused(Exception):
    """A provider-side check failed (issuer, target, link)."""


class InvocationHandler:
    """Validates and executes invocations against one store."""

    def __init__(
        self,
        host_data: HostData,
        links: LinkRegistry,
        store: KeyValueStore,
        publish_change: Callable[[Change], Awaitable[None] | None],
        chunks: ChunkStore,
        metrics: Metrics,
    ) -> None:
        self._issuers = frozenset(host_data.cluster_issuers)
        self._provider_key = host_data.provider_key
        self._host_id = host_data.host_id
        self._links = links
        self._store = store
        self._publish_change = publish_change
        self._chunks = chunks
        self._metrics = metrics

    async def handle(self, data: bytes) -> InvocationResponse:
        """Process one raw message body; never raises."""
        started = time.perf_counter()
        try:
            inv = Invocation.decode(data)
        except DecodeError as error:
            self._metrics.record("deser", started, error=True)
            return InvocationResponse.failure("", f"deser error: deserialization: {error}")
        operation_name = inv.operation
        try:
            if inv.content_length is not None and inv.content_length > len(inv.msg):
                inv.msg = await self._chunks.fetch_request(inv.id, inv.content_length)
            output, change = self._execute(inv)
            if change is not None:
                durable = self._publish_change(change)
                if durable is not None:  # a synchronous backend: answer once it is stored
                    await durable
            if len(output) > RESPONSE_CHUNK_THRESHOLD:
                await self._chunks.store_response(inv.id, output)
                response = InvocationResponse(b"", inv.id, None, len(output))
            else:
                response = InvocationResponse.success(inv.id, output)
            self._metrics.record(operation_name, started)
            return response
        except (*_REFUSALS, _Refused) as error:
            self._metrics.record(operation_name, started, error=True)
            log.debug("invocation refused", operation=operation_name, error=str(error))
            return InvocationResponse.failure(inv.id, str(error))
        except Exception as error:  # a bug must cost one call, not the process
            self._metrics.record(operation_name, started, error=True)
            log.exception("invocation failed", operation=operation_name)
            return InvocationResponse.failure(inv.id, f"internal error: {type(error).__name__}")

    def _execute(self, inv: Invocation) -> tuple[bytes, Change | None]:
        claims = validate_invocation(inv)
        if claims["iss"] not in self._issuers:
            raise _Refused(issuer_not_trusted_error())
        if inv.target.public_key != self._provider_key:
            raise _Refused(target_mismatch_error(inv.target.public_key, self._host_id))
        if inv.origin.public_key not in self._links:
            raise _Refused(unlinked_actor_error(inv.origin.public_key))
        operation = resolve_operation(inv.operation)
        argument = operation.decode_input(inv.msg)
        return execute(self._store, operation, argument)
