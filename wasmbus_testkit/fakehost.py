"""A fake wasmCloud host: launches any provider and drives it over NATS exactly like a host.

Nothing is mocked. :class:`FakeHost` writes the base64 HostData line to a real provider child
process, talks to it through a real nats-server, signs every invocation with real Ed25519 claims
and publishes link definitions, health and shutdown requests on the provider's real subjects
(protocol spec §2-§10), in either host's style (:class:`~wasmbus_testkit.hostdata.HostStyle`:
the OTP host, or ``test_mode=True`` for ``wasmcloud-test-util``'s).

It knows no contract: ``contract_id`` says which one the provider implements, and arguments and
results are the contract's own bytes (:class:`~wasmbus_testkit.invoker.Invoker`).
:class:`~wasmbus_testkit.keyvalue.KeyValueHost` adds typed ``wasmcloud:keyvalue`` clients.

Waits poll the provider (a health request, or a probe call) instead of sleeping, so a fast
machine is not slowed down and a slow one is tolerated. Whether a link is in force is probed the
way only the provider can tell: a call from the actor, answered with ``unlinked actor: '…'``
while there is no link (spec §6 checks the link before it looks at the operation, so the
default probe's operation needs to exist in no contract).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from contract.claims import unlinked_actor_error
from contract.nkeys import KeyPair
from contract.wire import (
    HealthCheckResponse,
    Invocation,
    InvocationResponse,
    LinkDefinition,
    Subjects,
)
from wasmbus_testkit.hostdata import (
    HostKeys,
    HostStyle,
    build_host_data,
    link_definition,
    shutdown_request,
)
from wasmbus_testkit.invoker import Invoker
from wasmbus_testkit.natsserver import NatsServer
from wasmbus_testkit.process import ProviderProcess
from wasmbus_testkit.waiting import flush_in_order, wait_for

__all__ = ["DEFAULT_LINK_PROBE", "FakeHost", "Launcher", "LinkProbe"]

#: Starts a provider child from its stdin line (the ``provider_factory`` fixture's signature).
Launcher = Callable[[bytes], ProviderProcess]

#: ``(operation, msg)`` of the call that tells whether an actor is linked (see module docstring).
LinkProbe = tuple[str, bytes]
#: An operation no contract has: a linked actor gets "unknown operation", an unlinked one not.
DEFAULT_LINK_PROBE: LinkProbe = ("TestKit.LinkProbe", b"")

_OWN = object()  # sentinel: "the host id this FakeHost launched the provider with"


def _key(actor: KeyPair | str) -> str:
    return actor.public_key if isinstance(actor, KeyPair) else actor


class FakeHost:
    """Launches one provider process and plays the host's side of the protocol.

    Build it, optionally adjust :attr:`host_data` (a mutable dataclass), then ``await start()``.
    ``launch`` starts the process from its stdin line (the ``provider_factory`` fixture, or
    ``lambda line: ProviderProcess(line, cmd).start()``). ``keys.actor`` is linked at start
    unless ``link_actor_at_start=False``.
    """

    def __init__(
        self,
        server: NatsServer,
        launch: Launcher,
        *,
        contract_id: str,
        test_mode: bool = False,
        padded: bool | None = None,
        keys: HostKeys | None = None,
        lattice: str | None = None,
        link_name: str = "default",
        link_actor_at_start: bool = True,
        link_values: dict[str, str] | None = None,
        structured_logging: bool = False,
        log_level: str | None = None,
        config_json: str | None = None,
        rpc_timeout: float = 2.0,
        link_probe: LinkProbe = DEFAULT_LINK_PROBE,
    ) -> None:
        self.server = server
        self._launch = launch
        self.contract_id = contract_id
        self.test_mode = test_mode
        self.style = HostStyle.TEST if test_mode else HostStyle.OTP
        self.padded = self.style.padded if padded is None else padded
        self.keys = keys or HostKeys()
        self.lattice = lattice or self.style.default_lattice
        self.link_name = link_name
        self.rpc_timeout = rpc_timeout
        self.link_probe = link_probe
        #: Signs invocations and is the only trusted issuer.
        self.issuer: KeyPair = self.style.issuer(self.keys)
        self.host_id = self.style.host_id(self.keys)
        #: Contract id put in invocation targets ("" in test mode, as the harness does).
        self.target_contract_id = self.style.target_contract_id(contract_id)
        self.subjects = Subjects(self.lattice, self.keys.provider.public_key, link_name)
        links = []
        if link_actor_at_start:
            links.append(self.link_definition(self.keys.actor, link_values or {}))
        self.host_data = build_host_data(
            self.keys,
            server.host_port,  # no scheme, as both the OTP host and the harness send it
            style=self.style,
            lattice=self.lattice,
            link_name=link_name,
            links=links,
            config_json=config_json,
            structured_logging=structured_logging,
            log_level=log_level,
        )
        self.process: ProviderProcess | None = None
        self._nc: NATS | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def stdin_line(self) -> bytes:
        """The exact line written to the provider: padded + LF (OTP) or unpadded + CRLF."""
        return self.host_data.to_stdin_line(padded=self.padded)

    @property
    def nc(self) -> NATS:
        """The host's own NATS connection (open between :meth:`start` and :meth:`stop`)."""
        if self._nc is None:
            raise RuntimeError("FakeHost not started")
        return self._nc

    async def start(self, *, wait_healthy: bool = True, timeout: float = 15.0) -> FakeHost:
        """Launch the provider, connect to NATS and (by default) wait for a health reply."""
        if self.process is not None:
            raise RuntimeError("FakeHost already started")
        self.process = self._launch(self.stdin_line)
        self._nc = await nats.connect(self.server.url, connect_timeout=2, max_reconnect_attempts=3)
        if wait_healthy:
            await self.wait_healthy(timeout)
        return self

    async def wait_healthy(self, timeout: float = 15.0) -> HealthCheckResponse:
        """Poll the health subject until the provider answers (it subscribes to health last).

        Fails at once, with the provider's stderr, if the process exits while we wait.
        """
        process = self.process
        assert process is not None
        deadline = time.monotonic() + timeout
        while True:
            if not process.is_running():
                raise RuntimeError(
                    f"provider exited with status {process.returncode} before answering "
                    f"health:\n{process.stderr_text()}"
                )
            try:
                return await self.health(timeout=0.25)
            except (NoRespondersError, NatsTimeoutError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"provider not healthy after {timeout:.1f}s\n--- provider stderr ---\n"
                    f"{process.stderr_text()}"
                )
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Disconnect and SIGKILL the provider (what the host does after a shutdown request)."""
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 2)
        if self.process is not None:
            self.process.kill()

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for the provider to exit on its own (after a shutdown) and return its status."""
        assert self.process is not None
        return await self.process.wait_async(timeout)

    def stderr(self) -> str:
        return self.process.stderr_text() if self.process is not None else ""

    # ------------------------------------------------------------------ invocations
    def invoker(
        self,
        actor: KeyPair | str | None = None,
        *,
        signer: KeyPair | None = None,
        contract_id: str | None = None,
        host_id: str | None = None,
        timeout: float | None = None,
    ) -> Invoker:
        """An :class:`Invoker` calling as ``actor`` (default ``keys.actor``), signed by the
        issuer unless ``signer`` is given."""
        return Invoker(
            self,  # requests go through self.nc, so an invoker made before start() works too
            lattice_prefix=self.lattice,
            provider_key=self.keys.provider.public_key,
            link_name=self.link_name,
            contract_id=self.target_contract_id if contract_id is None else contract_id,
            signer=signer or self.issuer,
            actor_key=_key(actor or self.keys.actor),
            host_id=host_id,
            timeout=self.rpc_timeout if timeout is None else timeout,
        )

    async def invoke(
        self, operation: str, msg: bytes = b"", *, actor: KeyPair | str | None = None
    ) -> InvocationResponse:
        """Sign and send one call as ``actor`` (default ``keys.actor``); return the reply."""
        return await self.invoker(actor).invoke(operation, msg)

    def invocation(
        self,
        operation: str,
        msg: bytes,
        *,
        actor: KeyPair | str | None = None,
        signer: KeyPair | None = None,
        target_key: str | None = None,
        host_id: str | None = None,
    ) -> Invocation:
        """A validly signed host-layout Invocation (tests tamper with it before sending).

        ``target_key`` replaces the provider key in the target (a misaddressed call).
        """
        invoker = Invoker(
            self,
            lattice_prefix=self.lattice,
            provider_key=target_key or self.keys.provider.public_key,
            link_name=self.link_name,
            contract_id=self.target_contract_id,
            signer=signer or self.issuer,
            actor_key=_key(actor or self.keys.actor),
            host_id=host_id,
        )
        return invoker.build(operation, msg)

    async def request(self, subject: str, payload: bytes = b"", timeout: float = 2.0) -> Any:
        """nats-py's ``request`` on the host's connection."""
        return await self.nc.request(subject, payload, timeout=timeout)

    async def raw_request(self, data: bytes, timeout: float | None = None) -> bytes:
        """Send arbitrary bytes on the RPC subject and return the raw reply body."""
        reply = await self.nc.request(
            self.subjects.rpc, data, timeout=self.rpc_timeout if timeout is None else timeout
        )
        return reply.data

    async def raw_invoke(self, data: bytes, timeout: float | None = None) -> InvocationResponse:
        """:meth:`raw_request`, with the reply decoded as an InvocationResponse."""
        return InvocationResponse.decode(await self.raw_request(data, timeout))

    async def send(self, inv: Invocation, timeout: float | None = None) -> InvocationResponse:
        """Send an Invocation (e.g. one from :meth:`invocation`) and decode the reply."""
        return await self.raw_invoke(inv.encode(), timeout)

    # ------------------------------------------------------------------ links
    def link_definition(
        self, actor: KeyPair | str, values: dict[str, str] | None = None
    ) -> LinkDefinition:
        return link_definition(
            self.keys.provider.public_key,
            _key(actor),
            contract_id=self.contract_id,
            link_name=self.link_name,
            values=values,
        )

    async def link(
        self,
        actor: KeyPair | str,
        values: dict[str, str] | None = None,
        *,
        wait: bool = True,
        timeout: float = 5.0,
    ) -> None:
        """Publish ``linkdefs.put`` (no reply, as the host does); wait until calls pass."""
        link = self.link_definition(actor, values)
        await self.publish(self.subjects.link_put, self.style.encode_link(link))
        if wait:
            await wait_for(
                lambda: self._probe_linked(actor, expect=True), timeout, message="link in force"
            )

    async def unlink(
        self, actor: KeyPair | str, *, wait: bool = True, timeout: float = 5.0
    ) -> None:
        """Publish ``linkdefs.del``; wait until calls from ``actor`` are refused as unlinked."""
        link = self.link_definition(actor)
        await self.publish(self.subjects.link_del, self.style.encode_link(link))
        if wait:
            await wait_for(
                lambda: self._probe_linked(actor, expect=False), timeout, message="link removed"
            )

    async def is_linked(self, actor: KeyPair | str) -> bool:
        """Whether the probe call from ``actor`` gets past the provider's link check."""
        operation, msg = self.link_probe
        response = await self.send(self.invocation(operation, msg, actor=actor))
        return response.error != unlinked_actor_error(_key(actor))

    async def _probe_linked(self, actor: KeyPair | str, *, expect: bool) -> bool:
        return await self.is_linked(actor) == expect

    async def publish(self, subject: str, data: bytes) -> None:
        """Publish without a reply subject; the server has it when we return."""
        await self.nc.publish(subject, data)
        await flush_in_order(self.nc)

    # ------------------------------------------------------------------ health & shutdown
    async def health_raw(self, body: bytes | None = None, timeout: float = 2.0) -> bytes:
        """The raw health reply; the request body is the host style's unless given."""
        if body is None:
            body = self.style.health_body
        reply = await self.nc.request(self.subjects.health, body, timeout=timeout)
        return reply.data

    async def health(self, timeout: float = 2.0) -> HealthCheckResponse:
        """The decoded health reply (msgpack, or JSON in test mode)."""
        return self.style.decode_health(await self.health_raw(timeout=timeout))

    async def shutdown(
        self,
        host_id: Any = _OWN,
        *,
        body: bytes | None = None,
        with_reply: bool = True,
        timeout: float = 2.0,
    ) -> bytes | None:
        """Send a shutdown request; returns the reply (``b"shutting down"``) or None.

        The body is JSON ``{"host_id": …}`` (own host id by default; ``host_id=None`` sends the
        empty body of hosts < 0.59), unless ``body`` gives the exact bytes. ``with_reply=False``
        publishes without a reply subject (the provider must ignore it). With a reply subject,
        a request nobody answers raises ``nats.errors.TimeoutError``.
        """
        if body is None:
            body = shutdown_request(self.host_id if host_id is _OWN else host_id)
        if not with_reply:
            await self.publish(self.subjects.shutdown, body)
            return None
        reply = await self.nc.request(self.subjects.shutdown, body, timeout=timeout)
        return reply.data

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.subjects.rpc} {self.style.value}>"
