"""An async ``wasmcloud:keyvalue`` client that talks to the provider the way a host does.

Tests, the CLI and the benchmarks need to drive a running provider without a wasmCloud host.
This client builds the same signed, host-layout Invocations the OTP host sends and publishes them
on the provider's RPC subject with an ordinary NATS request, so whatever works through it works
for a real host too. It is the only module of ``contract`` that performs I/O, and only through
the connection object it is given (any object with nats-py's ``request`` coroutine, and its
``jetstream()`` for a body over the chunking threshold).

Large bodies travel through the lattice's JetStream object store, as the host does it
(protocol spec §11): an argument over :data:`REQUEST_CHUNK_THRESHOLD` is stored under the
invocation id and sent with an empty ``msg``; a reply announced as chunked is fetched from
``{id}-r`` and deleted. Either way up to :data:`MAX_CHUNKED_BYTES` (a 16 MiB value).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Iterable
from typing import Any, Protocol, cast

from contract._fields import FieldError
from contract.claims import invocation_hash, sign_claims
from contract.codec import MAX_MESSAGE_BYTES, DecodeError, unpack
from contract.keyvalue import (
    _CONVERTERS,
    CONTRACT_ID,
    UNIT,
    ArgumentError,
    GetResponse,
    IncrementRequest,
    ListAddRequest,
    ListDelRequest,
    ListRangeRequest,
    Operation,
    SetAddRequest,
    SetDelRequest,
    SetRequest,
    resolve_operation,
)
from contract.nkeys import KeyPair
from contract.wire import Invocation, InvocationResponse, Subjects, WasmCloudEntity

__all__ = ["MAX_CHUNKED_BYTES", "REQUEST_CHUNK_THRESHOLD", "KeyValueClient", "KeyValueError"]

#: Arguments strictly larger than this go through the object store (the SDK's threshold).
REQUEST_CHUNK_THRESHOLD = 900 * 1024
#: Largest chunked body either way: a 16 MiB value, its key and the msgpack framing.
MAX_CHUNKED_BYTES = 16 * 1024 * 1024 + 64 * 1024
#: Extra reply time for a chunked call (the SDK adds 13 s to its own timeout when it chunks).
CHUNKED_EXTRA_TIMEOUT = 13.0


class KeyValueError(Exception):
    """The provider answered with ``InvocationResponse.error``; ``str(err)`` is that text."""


# The parts of nats-py the client uses, as protocols: a nats-py ``Client`` is one, and so is a
# test double with only ``request`` while no body is chunked.


class _Msg(Protocol):
    @property
    def data(self) -> bytes: ...


class _ObjectResult(Protocol):
    @property
    def data(self) -> bytes | None: ...


class _ObjectStore(Protocol):
    async def put(self, name: str, data: bytes) -> object: ...

    async def get(self, name: str) -> _ObjectResult: ...

    async def delete(self, name: str) -> object: ...


class _JetStream(Protocol):
    async def object_store(self, bucket: str) -> _ObjectStore: ...

    async def create_object_store(self, bucket: str) -> _ObjectStore: ...


class _Requester(Protocol):
    async def request(self, subject: str, payload: bytes = b"", timeout: float = ...) -> _Msg: ...

    def jetstream(self) -> _JetStream: ...


class KeyValueClient:
    """Signs and sends KeyValue invocations for one (actor, provider, link) triple.

    NATS errors (timeouts, no responders) propagate unchanged from the connection object.
    """

    __slots__ = (
        "_host_id",
        "_lattice_prefix",
        "_nc",
        "_origin",
        "_origin_url",
        "_signer",
        "_subject",
        "_target",
        "_target_url_prefix",
        "_timeout",
    )

    def __init__(
        self,
        nc: _Requester,
        *,
        lattice_prefix: str,
        provider_key: str,
        link_name: str = "default",
        signer: KeyPair,
        actor_key: str,
        contract_id: str = CONTRACT_ID,
        host_id: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        self._nc = nc
        self._signer = signer
        self._timeout = timeout
        self._lattice_prefix = lattice_prefix  # also the chunking object store's bucket
        # Everything that does not depend on the call is computed once: only the id, the
        # argument hash and the signature change per invocation.
        self._subject = Subjects(lattice_prefix, provider_key, link_name).rpc
        self._origin = WasmCloudEntity(actor_key, "", "")
        self._target = WasmCloudEntity(provider_key, link_name, contract_id)
        self._origin_url = self._origin.url()
        self._target_url_prefix = f"{self._target.url()}/"
        self._host_id = signer.public_key if host_id is None else host_id

    @property
    def subject(self) -> str:
        return self._subject

    def build_invocation(self, operation: str, msg: bytes) -> Invocation:
        """A freshly signed Invocation (exposed for tests that tamper with it before sending)."""
        inv_id = str(uuid.uuid4())
        target_url = self._target_url_prefix + operation
        token = sign_claims(
            self._signer,
            origin_url=self._origin_url,
            target_url=target_url,
            hash=invocation_hash(self._origin_url, target_url, operation, msg),
            subject=inv_id,
        )
        return Invocation(
            self._origin, self._target, operation, msg, inv_id, token, self._host_id, len(msg)
        )

    async def invoke(
        self, operation: str, msg: bytes, *, timeout: float | None = None
    ) -> InvocationResponse:
        """Send one raw invocation and decode the reply (errors are returned, not raised).

        An argument over :data:`REQUEST_CHUNK_THRESHOLD` is stored in the object store first.
        """
        inv = self.build_invocation(operation, msg)
        wait = self._timeout if timeout is None else timeout
        if len(msg) > REQUEST_CHUNK_THRESHOLD:
            await asyncio.wait_for(self._store_chunked_request(inv.id, msg), wait + 10)
            inv = dataclasses.replace(inv, msg=b"", content_length=len(msg))
            wait += CHUNKED_EXTRA_TIMEOUT
        reply = await self._nc.request(self._subject, inv.encode(), timeout=wait)
        return InvocationResponse.decode(reply.data)

    async def _store_chunked_request(self, invocation_id: str, msg: bytes) -> None:
        js = self._nc.jetstream()
        try:
            store = await js.object_store(self._lattice_prefix)
        except Exception:  # the bucket does not exist yet: create it as the host would
            store = await js.create_object_store(self._lattice_prefix)
        await store.put(invocation_id, msg)

    async def call(self, method: str, arg: Any) -> Any:
        """Invoke ``KeyValue.<method>`` with a Python argument and return the decoded result."""
        op = resolve_operation(f"KeyValue.{method}")
        resp = await self.invoke(op.wire_name, op.encode_input(arg))
        if resp.error is not None:
            raise KeyValueError(resp.error)
        msg = resp.msg
        if resp.content_length is not None and resp.content_length > len(msg):
            msg = await self._fetch_chunked_reply(resp.invocation_id)
        return _decode_output(op, msg)

    async def _fetch_chunked_reply(self, invocation_id: str) -> bytes:
        """A reply over the chunking threshold waits in the lattice's object store under
        ``{id}-r`` (protocol spec §11); fetch and delete it, as the host does."""
        name = f"{invocation_id}-r"
        try:
            store = await self._nc.jetstream().object_store(self._lattice_prefix)
            result = await asyncio.wait_for(store.get(name), self._timeout + CHUNKED_EXTRA_TIMEOUT)
        except Exception as error:
            text = str(error) or type(error).__name__
            raise KeyValueError(f"chunked reply {name} could not be fetched: {text}") from None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(store.delete(name), self._timeout)
        return bytes(result.data or b"")

    # ------------------------------------------------------------- typed helpers ----
    # ``call`` decodes through the operation table, so its result is typed only by the table:
    # each helper names the output type that its operation's table row produces.

    async def get(self, key: str) -> GetResponse:
        return cast("GetResponse", await self.call("Get", key))

    async def set(self, key: str, value: str, expires: int = 0) -> None:
        await self.call("Set", SetRequest(key, value, expires))

    async def delete(self, key: str) -> bool:
        return cast("bool", await self.call("Del", key))

    async def contains(self, key: str) -> bool:
        return cast("bool", await self.call("Contains", key))

    async def increment(self, key: str, delta: int) -> int:
        return cast("int", await self.call("Increment", IncrementRequest(key, delta)))

    async def list_add(self, list_name: str, value: str) -> int:
        return cast("int", await self.call("ListAdd", ListAddRequest(list_name, value)))

    async def list_del(self, list_name: str, value: str) -> bool:
        return cast("bool", await self.call("ListDel", ListDelRequest(list_name, value)))

    async def list_clear(self, list_name: str) -> bool:
        return cast("bool", await self.call("ListClear", list_name))

    async def list_range(self, list_name: str, start: int, stop: int) -> list[str]:
        return cast(
            "list[str]", await self.call("ListRange", ListRangeRequest(list_name, start, stop))
        )

    async def set_add(self, set_name: str, value: str) -> int:
        return cast("int", await self.call("SetAdd", SetAddRequest(set_name, value)))

    async def set_del(self, set_name: str, value: str) -> int:
        return cast("int", await self.call("SetDel", SetDelRequest(set_name, value)))

    async def set_query(self, set_name: str) -> list[str]:
        return cast("list[str]", await self.call("SetQuery", set_name))

    async def set_union(self, set_names: Iterable[str]) -> list[str]:
        return cast("list[str]", await self.call("SetUnion", set_names))

    async def set_intersection(self, set_names: Iterable[str]) -> list[str]:
        return cast("list[str]", await self.call("SetIntersection", set_names))

    async def set_clear(self, set_name: str) -> bool:
        return cast("bool", await self.call("SetClear", set_name))

    def __repr__(self) -> str:
        return f"KeyValueClient(subject={self._subject!r}, actor={self._origin.public_key!r})"


def _decode_output(op: Operation, msg: bytes) -> Any:
    """``op.decode_output``, also for a chunked reply over the 1 MiB message limit."""
    if len(msg) <= MAX_MESSAGE_BYTES or op.output_type == UNIT:
        return op.decode_output(msg)
    try:
        return _CONVERTERS[op.output_type][0](unpack(msg, max_bytes=MAX_CHUNKED_BYTES))
    except (DecodeError, FieldError) as exc:
        raise ArgumentError(op.output_type, str(exc)) from None
