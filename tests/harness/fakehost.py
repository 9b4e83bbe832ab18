"""A fake wasmCloud host: launches the provider and drives it over NATS exactly like a host.

Nothing is mocked. :class:`FakeHost` writes the base64 HostData line to a real provider child
process, talks to it through a real nats-server, signs every invocation with real Ed25519 claims
and publishes link definitions, health and shutdown requests on the provider's real subjects
(protocol spec §2-§10). Two host flavours are supported:

* **OTP style** (default): lattice ``default``, link ``default``, a ``host:port`` URL without a
  scheme, a cluster key ``C…`` as the only trusted issuer (and as ``invocation_seed``), msgpack
  link definitions and health replies, HostData line padded and ended with ``\\n``.
* **test mode** (``test_mode=True``, the ``wasmcloud-test-util`` harness, spec §14): host id
  ``_TEST_``, lattice ``TEST``, a server key ``N…`` as issuer, targets with an empty
  contract id, JSON link definitions and health replies, HostData line unpadded and ended with
  ``\\r\\n``.

Waits poll the provider (a health request, or a probe call) instead of sleeping, so a fast
machine is not slowed down and a slow one is tolerated.

:class:`ThreadLoop` runs a FakeHost on an event loop in a background thread, for synchronous
tests (hypothesis ``@given`` tests cannot take pytest-asyncio's function-scoped fixtures).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from contract.claims import make_signed_invocation, unlinked_actor_error
from contract.client import KeyValueClient
from contract.codec import pack
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair
from contract.wire import (
    TEST_MODE_HOST_ID,
    HealthCheckResponse,
    HostData,
    Invocation,
    InvocationResponse,
    LinkDefinition,
    Subjects,
    WasmCloudEntity,
)
from tests.harness.natsserver import NatsServer
from tests.harness.processes import ProviderProcess, wait_for

__all__ = ["FakeHost", "HostKeys", "Launcher", "ThreadLoop"]

T = TypeVar("T")

#: Starts a provider child from its stdin line (the ``provider_factory`` fixture's signature).
Launcher = Callable[[bytes], ProviderProcess]

#: What the OTP host sends as a health request body: msgpack ``{"placeholder": true}``.
OTP_HEALTH_BODY = pack({"placeholder": True})
#: What the test harness sends as a health request body.
TEST_HEALTH_BODY = b"{}"

_PROBE_KEY = "__fakehost_probe__"
_OWN = object()  # sentinel: "the host id this FakeHost launched the provider with"


@dataclass
class HostKeys:
    """The identities of one fake lattice. Seeds are secrets: never log them."""

    cluster: KeyPair = field(default_factory=lambda: KeyPair.generate("cluster"))
    host: KeyPair = field(default_factory=lambda: KeyPair.generate("server"))
    provider: KeyPair = field(default_factory=lambda: KeyPair.generate("service"))
    actor: KeyPair = field(default_factory=lambda: KeyPair.generate("module"))
    #: The test harness's random server key: issuer and invocation seed in test mode.
    harness: KeyPair = field(default_factory=lambda: KeyPair.generate("server"))


def _key(actor: KeyPair | str) -> str:
    return actor.public_key if isinstance(actor, KeyPair) else actor


class FakeHost:
    """Launches one provider process and plays the host's side of the protocol.

    Build it, optionally adjust :attr:`host_data` (a mutable dataclass), then ``await start()``.
    """

    def __init__(
        self,
        server: NatsServer,
        launch: Launcher,
        *,
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
    ) -> None:
        self.server = server
        self._launch = launch
        self.test_mode = test_mode
        self.padded = (not test_mode) if padded is None else padded
        self.keys = keys or HostKeys()
        self.lattice = lattice or ("TEST" if test_mode else "default")
        self.link_name = link_name
        self.rpc_timeout = rpc_timeout
        k = self.keys
        #: Signs invocations and is the only trusted issuer.
        self.issuer: KeyPair = k.harness if test_mode else k.cluster
        self.host_id = TEST_MODE_HOST_ID if test_mode else k.host.public_key
        #: Contract id put in invocation targets ("" in test mode, as the harness does).
        self.target_contract_id = "" if test_mode else CONTRACT_ID
        self.subjects = Subjects(self.lattice, k.provider.public_key, link_name)
        links = []
        if link_actor_at_start:
            links.append(self.link_definition(k.actor, link_values or {}))
        self.host_data = HostData(
            host_id=self.host_id,
            lattice_rpc_prefix=self.lattice,
            link_name=link_name,
            lattice_rpc_url=server.host_port,  # no scheme, as both the OTP host and harness
            provider_key=k.provider.public_key,
            invocation_seed=self.issuer.seed,
            env_values={},
            instance_id=str(uuid.uuid4()),  # the OTP host picks a UUIDv4 per process
            link_definitions=links,
            cluster_issuers=[self.issuer.public_key],
            config_json=config_json,
            structured_logging=structured_logging,
            log_level=log_level,
        )
        self.process: ProviderProcess | None = None
        self._nc: NATS | None = None
        self._kv: KeyValueClient | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def stdin_line(self) -> bytes:
        """The exact line written to the provider: padded + LF (OTP) or unpadded + CRLF."""
        return self.host_data.to_stdin_line(padded=self.padded)

    @property
    def nc(self) -> NATS:
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
        assert self.process is not None
        return await self.process.wait_async(timeout)

    def stderr(self) -> str:
        return self.process.stderr_text() if self.process is not None else ""

    # ------------------------------------------------------------------ invocations
    @property
    def kv(self) -> KeyValueClient:
        """A client for the actor linked at start (``keys.actor``), signed by the issuer."""
        if self._kv is None:
            self._kv = self.client_for(self.keys.actor)
        return self._kv

    def client_for(
        self,
        actor: KeyPair | str,
        *,
        signer: KeyPair | None = None,
        contract_id: str | None = None,
        host_id: str | None = None,
        timeout: float | None = None,
    ) -> KeyValueClient:
        """A KeyValueClient calling as ``actor``, signing with ``signer`` (default: issuer)."""
        return KeyValueClient(
            self.nc,
            lattice_prefix=self.lattice,
            provider_key=self.keys.provider.public_key,
            link_name=self.link_name,
            signer=signer or self.issuer,
            actor_key=_key(actor),
            contract_id=self.target_contract_id if contract_id is None else contract_id,
            host_id=host_id,
            timeout=self.rpc_timeout if timeout is None else timeout,
        )

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
        """A validly signed host-layout Invocation (tests tamper with it before sending)."""
        origin = WasmCloudEntity(_key(actor or self.keys.actor), "", "")
        target = WasmCloudEntity(
            target_key or self.keys.provider.public_key, self.link_name, self.target_contract_id
        )
        return make_signed_invocation(
            signer or self.issuer, origin, target, operation, msg, host_id=host_id
        )

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
        return await self.raw_invoke(inv.encode(), timeout)

    # ------------------------------------------------------------------ links
    def link_definition(
        self, actor: KeyPair | str, values: dict[str, str] | None = None
    ) -> LinkDefinition:
        return LinkDefinition(
            actor_id=_key(actor),
            provider_id=self.keys.provider.public_key,
            link_name=self.link_name,
            contract_id=CONTRACT_ID,
            values=dict(values or {}),
        )

    def _encode_link(self, link: LinkDefinition) -> bytes:
        return link.encode_json() if self.test_mode else link.encode_msgpack()

    async def link(
        self,
        actor: KeyPair | str,
        values: dict[str, str] | None = None,
        *,
        wait: bool = True,
        timeout: float = 5.0,
    ) -> None:
        """Publish ``linkdefs.put`` (no reply, as the host does); wait until calls pass."""
        await self.nc.publish(
            self.subjects.link_put, self._encode_link(self.link_definition(actor, values))
        )
        await self.nc.flush()
        if wait:
            await wait_for(
                lambda: self._probe_linked(actor, expect=True), timeout, message="link in force"
            )

    async def unlink(
        self, actor: KeyPair | str, *, wait: bool = True, timeout: float = 5.0
    ) -> None:
        """Publish ``linkdefs.del``; wait until calls from ``actor`` are refused as unlinked."""
        await self.nc.publish(
            self.subjects.link_del, self._encode_link(self.link_definition(actor))
        )
        await self.nc.flush()
        if wait:
            await wait_for(
                lambda: self._probe_linked(actor, expect=False), timeout, message="link removed"
            )

    async def is_linked(self, actor: KeyPair | str) -> bool:
        """Whether a read-only probe call from ``actor`` gets past the link check."""
        inv = self.invocation("KeyValue.Contains", pack(_PROBE_KEY), actor=actor)
        response = await self.send(inv)
        return response.error != unlinked_actor_error(_key(actor))

    async def _probe_linked(self, actor: KeyPair | str, *, expect: bool) -> bool:
        return await self.is_linked(actor) == expect

    async def publish(self, subject: str, data: bytes) -> None:
        """Publish without a reply subject, then flush (so the server has it when we return)."""
        await self.nc.publish(subject, data)
        await self.nc.flush()

    # ------------------------------------------------------------------ health & shutdown
    async def health_raw(self, body: bytes | None = None, timeout: float = 2.0) -> bytes:
        """The raw health reply; the request body is the host flavour's unless given."""
        if body is None:
            body = TEST_HEALTH_BODY if self.test_mode else OTP_HEALTH_BODY
        reply = await self.nc.request(self.subjects.health, body, timeout=timeout)
        return reply.data

    async def health(self, timeout: float = 2.0) -> HealthCheckResponse:
        """The decoded health reply (msgpack, or JSON in test mode)."""
        data = await self.health_raw(timeout=timeout)
        if self.test_mode:
            return HealthCheckResponse.decode_json(data)
        return HealthCheckResponse.decode_msgpack(data)

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
        publishes without a reply subject, which a provider must ignore. With a reply subject,
        a request nobody answers raises ``nats.errors.TimeoutError``.
        """
        if body is None:
            if host_id is None:
                body = b""
            else:
                own = self.host_id if host_id is _OWN else host_id
                body = json.dumps({"host_id": own}).encode()
        if not with_reply:
            await self.publish(self.subjects.shutdown, body)
            return None
        reply = await self.nc.request(self.subjects.shutdown, body, timeout=timeout)
        return reply.data


class ThreadLoop:
    """An asyncio loop in a daemon thread, driven from synchronous code with :meth:`run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ThreadLoop")
        self._thread.daemon = True

    def __enter__(self) -> ThreadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and block until its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
