"""The RPC path: one Invocation in, one InvocationResponse out (protocol spec §6).

Steps, in the spec's order: decode the envelope, fetch a chunked body, validate the claims, check
issuer / target / link, dispatch, reply. Every request that has a reply subject gets a decodable
InvocationResponse, whatever it contained; a refused call changes nothing.

One deliberate change of order for chunked calls (body in the object store): the signature,
issuer, target and link are checked *before* the body is downloaded, so a call with forged or
foreign claims costs no download (and leaves the object where it is: deleting it on behalf of an
unauthenticated caller would let anyone delete another call's body). The hash and URL checks
run on the fetched body as usual.

This is the product's hot path (``bench/rpc.py``). Calls arriving together are handled as a
pipeline: :meth:`InvocationHandler.receive` decodes and pre-checks each call at once, their
signatures are verified as one batch (on the second core under load, see
:mod:`provider.rpc.verifier`), and :meth:`InvocationHandler._complete` finishes the checks, runs the
operations and queues the replies. Claims are verified on every call. Calls that must wait for
I/O (a chunked body, a durable write, a chunked reply) continue in their own task, so they never
hold up the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from contract.claims import (
    ClaimsError,
    PreparedClaims,
    finish_claims,
    issuer_not_trusted_error,
    prepare_claims,
    signature_valid,
    target_mismatch_error,
    unlinked_actor_error,
)
from contract.codec import MAX_MESSAGE_BYTES, DecodeError
from contract.keyvalue import (
    ArgumentError,
    Operation,
    UnknownOperationError,
    resolve_operation,
)
from contract.wire import HostData, Invocation, InvocationResponse
from provider.observe.metrics import Metrics
from provider.replication.base import ReplicationError
from provider.rpc.chunking import (
    MAX_CHUNKED_BYTES,
    RESPONSE_CHUNK_THRESHOLD,
    ChunkError,
    ChunkStore,
)
from provider.rpc.kvservice import execute
from provider.rpc.links import LinkRegistry
from provider.rpc.verifier import SignatureVerifier
from provider.store import Change, KeyValueStore, StoreError

log = structlog.get_logger("provider.rpc.invocations")

#: Refusals whose text goes back to the actor as-is.
_REFUSALS = (
    ClaimsError,
    UnknownOperationError,
    ArgumentError,
    StoreError,
    ChunkError,
    ReplicationError,
)

SendReply = Callable[[str, bytes], None]
#: A call waiting in a verification batch: its invocation, its claims, where the reply goes and
#: when it arrived (``time.perf_counter``).
_Pending = tuple[Invocation, PreparedClaims, str, float]

#: Calls per verification batch. Small enough that the worker starts verifying while the loop
#: is still decoding the calls behind them; large enough to amortise the pipe round trip.
MAX_BATCH = 16


class _Refused(Exception):
    """A provider-side check failed (issuer, target, link)."""


def decode_argument(operation: Operation, msg: bytes) -> object:
    """``operation.decode_input``, also for a chunked argument over the 1 MiB message limit
    (up to :data:`~provider.rpc.chunking.MAX_CHUNKED_BYTES`)."""
    if len(msg) <= MAX_MESSAGE_BYTES:
        return operation.decode_input(msg)
    return operation.decode_input(msg, max_bytes=MAX_CHUNKED_BYTES)


class InvocationHandler:
    """Validates and executes invocations against one store."""

    def __init__(
        self,
        host_data: HostData,
        links: LinkRegistry,
        store: KeyValueStore,
        publish_change: Callable[[Change], Awaitable[None] | None],
        chunks: ChunkStore | None,
        metrics: Metrics,
        verifier: SignatureVerifier | None = None,
        *,
        send_reply: SendReply,
    ) -> None:
        self._issuers = frozenset(host_data.cluster_issuers)
        self._provider_key = host_data.provider_key
        self._host_id = host_data.host_id
        self._links = links
        self._store = store
        self._publish_change = publish_change
        self._chunks = chunks
        self._metrics = metrics
        self._verifier = verifier or SignatureVerifier(use_worker=False)
        self._batch: list[_Pending] = []
        self._send = send_reply
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ pipelined path
    def receive(self, data: bytes, reply: str) -> None:
        """Start handling one message; its reply goes to ``send_reply(reply, body)`` when ready."""
        started = time.perf_counter()
        send = self._send
        try:
            inv = Invocation.decode(data)
        except DecodeError as error:
            send(reply, self._undecodable(error, started).encode())
            return
        if inv.content_length is not None and inv.content_length > len(inv.msg):
            self._spawn(self._handle_and_send(inv, reply, started))
            return
        try:
            prepared = prepare_claims(inv)
        except ClaimsError as error:
            send(reply, self._refused(inv, error, started).encode())
            return
        batch = self._batch
        if not batch:
            asyncio.get_running_loop().call_soon(self._verify_batch)
        batch.append((inv, prepared, reply, started))
        if len(batch) >= MAX_BATCH:  # ship it now, so the worker starts while we decode on
            self._verify_batch()

    def _verify_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:  # already shipped when it filled up
            return
        jobs = [(p.issuer_key, p.signing_input, p.signature) for _, p, _, _ in batch]
        self._verifier.submit(jobs, lambda verdicts: self._complete(batch, verdicts))

    def _complete(self, batch: list[_Pending], verdicts: list[bool]) -> None:
        send = self._send
        for (inv, prepared, reply, started), ok in zip(batch, verdicts, strict=True):
            try:
                output, change = self._execute(inv, prepared, ok)
                durable = self._publish_change(change) if change is not None else None
            except (*_REFUSALS, _Refused) as error:
                send(reply, self._refused(inv, error, started).encode())
                continue
            except Exception as error:
                send(reply, self._crashed(inv, error, started).encode())
                continue
            if durable is not None or len(output) > RESPONSE_CHUNK_THRESHOLD:
                self._spawn(self._answer_later(inv, output, durable, reply, started))
                continue
            self._metrics.record(inv.operation, started)
            send(reply, InvocationResponse.success(inv.id, output).encode())

    async def _answer_later(
        self,
        inv: Invocation,
        output: bytes,
        durable: Awaitable[None] | None,
        reply: str,
        started: float,
    ) -> None:
        try:
            if durable is not None:
                await durable
            response = await self._respond(inv, output, started)
        except (*_REFUSALS, _Refused) as error:
            response = self._refused(inv, error, started)
        except Exception as error:
            response = self._crashed(inv, error, started)
        self._send(reply, response.encode())

    async def _handle_and_send(self, inv: Invocation, reply: str, started: float) -> None:
        self._send(reply, (await self._handle_decoded(inv, started)).encode())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Let calls still waiting for I/O finish (their replies are queued) for up to
        ``timeout`` seconds, then cancel the rest without waiting for them."""
        pending = set(self._tasks)
        if pending and timeout > 0:
            _, pending = await asyncio.wait(pending, timeout=timeout)
        for task in pending:
            task.cancel()

    # ------------------------------------------------------------------ one call at a time
    async def _handle_decoded(self, inv: Invocation, started: float) -> InvocationResponse:
        if inv.content_length is not None and inv.content_length > len(inv.msg):
            return await self._handle_chunked(inv, started)
        try:
            prepared = prepare_claims(inv)
            ok = signature_valid(prepared.issuer_key, prepared.signing_input, prepared.signature)
            output, change = self._execute(inv, prepared, ok)
            if change is not None:
                durable = self._publish_change(change)
                if durable is not None:  # a durable backend: answer once it is stored
                    await durable
            return await self._respond(inv, output, started)
        except (*_REFUSALS, _Refused) as error:
            return self._refused(inv, error, started)
        except Exception as error:  # a bug must cost one call, not the process
            return self._crashed(inv, error, started)

    async def _handle_chunked(self, inv: Invocation, started: float) -> InvocationResponse:
        """A call whose body waits in the object store: claims first, then the download."""
        try:
            prepared = prepare_claims(inv)
            ok = signature_valid(prepared.issuer_key, prepared.signing_input, prepared.signature)
            if not ok:  # finish_claims' first check, before anything is downloaded
                raise ClaimsError("Invocation claims signature invalid")
            self._check_caller(inv, prepared.claims)
            size = inv.content_length or 0
            async with self._chunk_store().request_body(inv.id, size) as body:
                inv.msg = body
                output, change = self._execute(inv, prepared, ok)
                inv.msg = b""  # the body's memory is free once the slot is
            if change is not None:
                durable = self._publish_change(change)
                if durable is not None:
                    await durable
            return await self._respond(inv, output, started)
        except (*_REFUSALS, _Refused) as error:
            return self._refused(inv, error, started)
        except Exception as error:
            return self._crashed(inv, error, started)

    # ------------------------------------------------------------------ shared steps
    def _chunk_store(self) -> ChunkStore:
        """The object store for bodies over the message limit; without one, such a call is
        refused with a clear error instead of failing somewhere inside."""
        if self._chunks is None:
            raise ChunkError("chunked bodies are not available: no object store connection")
        return self._chunks

    def _check_caller(self, inv: Invocation, claims: dict[str, Any]) -> None:
        """The provider's own checks (spec §6 step 4): trusted issuer, this target, a link."""
        if claims["iss"] not in self._issuers:
            raise _Refused(issuer_not_trusted_error())
        if inv.target.public_key != self._provider_key:
            raise _Refused(target_mismatch_error(inv.target.public_key, self._host_id))
        if inv.origin.public_key not in self._links:
            raise _Refused(unlinked_actor_error(inv.origin.public_key))

    def _execute(
        self, inv: Invocation, prepared: PreparedClaims, signature_ok: bool
    ) -> tuple[bytes, Change | None]:
        self._check_caller(inv, finish_claims(inv, prepared, signature_ok))
        operation = resolve_operation(inv.operation)
        return execute(self._store, operation, decode_argument(operation, inv.msg))

    async def _respond(self, inv: Invocation, output: bytes, started: float) -> InvocationResponse:
        if len(output) > RESPONSE_CHUNK_THRESHOLD:
            await self._chunk_store().store_response(inv.id, output)
            response = InvocationResponse(b"", inv.id, None, len(output))
        else:
            response = InvocationResponse.success(inv.id, output)
        self._metrics.record(inv.operation, started)
        return response

    def _undecodable(self, error: Exception, started: float) -> InvocationResponse:
        self._metrics.record("deser", started, error=True)
        return InvocationResponse.failure("", f"deser error: deserialization: {error}")

    def _refused(self, inv: Invocation, error: Exception, started: float) -> InvocationResponse:
        self._metrics.record(inv.operation, started, error=True)
        log.debug("invocation refused", operation=inv.operation, error=str(error))
        return InvocationResponse.failure(inv.id, str(error))

    def _crashed(self, inv: Invocation, error: Exception, started: float) -> InvocationResponse:
        self._metrics.record(inv.operation, started, error=True)
        log.error("invocation failed", operation=inv.operation, exc_info=error)
        return InvocationResponse.failure(inv.id, f"internal error: {type(error).__name__}")
