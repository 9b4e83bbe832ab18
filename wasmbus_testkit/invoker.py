"""Signing and sending invocations for any contract, exactly as a host sends them.

A host calls a provider with a msgpack Invocation on ``wasmbus.rpc.{lattice}.{provider}.{link}``,
carrying a JWT signed by a trusted issuer that binds the call's origin, target, operation and
argument hash (protocol spec §5, §7). :class:`Invoker` builds and sends those for one
(actor, provider, link, contract) quadruple; the argument and result are the contract's own bytes
(usually msgpack), so it works for any contract. ``KeyValueClient`` (``contract.client``) adds
typed ``wasmcloud:keyvalue`` calls and chunking on the same wire format.
"""

from __future__ import annotations

from typing import Any, Protocol

from contract.claims import make_signed_invocation
from contract.codec import pack, unpack
from contract.nkeys import KeyPair
from contract.wire import Invocation, InvocationResponse, Subjects, WasmCloudEntity

__all__ = ["InvocationError", "Invoker"]


class InvocationError(Exception):
    """The provider answered with ``InvocationResponse.error``; ``str(err)`` is that text."""


class _Msg(Protocol):
    data: bytes


class _Requester(Protocol):
    async def request(self, subject: str, payload: bytes = b"", timeout: float = ...) -> _Msg: ...


class Invoker:
    """Signs and sends invocations from one actor to one provider link.

    ``nc`` is anything with nats-py's ``request`` coroutine, or None for an Invoker that only
    builds invocations (a load generator pre-signs them before any clock starts and sends the
    bytes itself). ``host_id`` defaults to the signer's public key (what the OTP host puts
    there). NATS errors (timeouts, no responders) propagate unchanged.
    """

    def __init__(
        self,
        nc: _Requester | None,
        *,
        lattice_prefix: str,
        provider_key: str,
        contract_id: str,
        signer: KeyPair,
        actor_key: str,
        link_name: str = "default",
        host_id: str | None = None,
        timeout: float = 2.0,
    ) -> None:
        self.nc = nc
        self.signer = signer
        self.host_id = host_id
        self.timeout = timeout
        self.subject = Subjects(lattice_prefix, provider_key, link_name).rpc
        self.origin = WasmCloudEntity(actor_key, "", "")
        self.target = WasmCloudEntity(provider_key, link_name, contract_id)

    def build(self, operation: str, msg: bytes, *, invocation_id: str | None = None) -> Invocation:
        """A freshly signed Invocation (tests may tamper with it before :meth:`send`)."""
        return make_signed_invocation(
            self.signer,
            self.origin,
            self.target,
            operation,
            msg,
            invocation_id=invocation_id,
            host_id=self.host_id,
        )

    async def send(self, inv: Invocation, timeout: float | None = None) -> InvocationResponse:
        """Send an Invocation on the RPC subject and decode the reply."""
        if self.nc is None:
            raise RuntimeError("this Invoker only builds invocations: it has no connection")
        wait = self.timeout if timeout is None else timeout
        reply = await self.nc.request(self.subject, inv.encode(), timeout=wait)
        return InvocationResponse.decode(reply.data)

    async def invoke(
        self, operation: str, msg: bytes = b"", *, timeout: float | None = None
    ) -> InvocationResponse:
        """Sign and send one call; the reply is returned whether it is a success or an error."""
        return await self.send(self.build(operation, msg), timeout)

    async def call(
        self, operation: str, msg: bytes = b"", *, timeout: float | None = None
    ) -> bytes:
        """Sign and send one call and return the result bytes; an error reply raises."""
        response = await self.invoke(operation, msg, timeout=timeout)
        if response.error is not None:
            raise InvocationError(response.error)
        return response.msg

    async def call_msgpack(self, operation: str, arg: Any, *, timeout: float | None = None) -> Any:
        """:meth:`call` for the common case of a msgpack argument and a msgpack result."""
        return unpack(await self.call(operation, pack(arg), timeout=timeout))

    def __repr__(self) -> str:
        return f"Invoker(subject={self.subject!r}, actor={self.origin.public_key!r})"
