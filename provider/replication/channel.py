"""The signed replication channel: every message out is sealed, every message in is checked.

:class:`SignedChannel` sits between a NATS connection and a backend. It signs what the backend
publishes, and opens what arrives: first the envelope (size, signer, signature), and only then
the body. Drops are counted (``untrusted_messages`` for envelopes that fail, ``dropped_messages``
for trusted bodies that fail validation) and logged at a bounded rate, so a flood costs a counter
increment per message and no log storm.

Requests use our own reply subjects (``{inbox}.{n}`` under one wildcard subscription), because
the signature of a request covers its reply subject: a captured pull replayed with another
reply subject fails the check, so nobody can have the cache delivered to their inbox.

Acks have one recipient, the writer, so they travel under a pair MAC instead of a signature
(:func:`~.signing.seal_for`, bound to the subject they are published on; see :mod:`.signing`).
The acker learns the writer's key from the envelope of what it confirms
(:attr:`~.messages.Message.signer`). Live change batches travel with one pair MAC per trusted
key instead (:func:`~.signing.seal_tagged`, bound to the events subject). A receiver accepts a
MAC only where it says so (``mac_kinds``: its own ack subject; ``tag_kinds``: the events
subject) and only for those kinds; everywhere else, and for every other kind, an envelope must
be signed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Collection, Iterable
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from . import messages as m
from .signing import (
    HEADER_BYTES,
    MAC_MAGIC,
    TAG_MAGIC,
    Trust,
    UntrustedMessage,
    Verifier,
    seal,
    seal_for,
    seal_tagged,
)

#: Cap on log lines about dropped messages between two calls of :meth:`new_log_period`.
DROP_LOGS_PER_PERIOD = 5
_NO_RESPONDERS = "503"


class _Log(Protocol):
    """The part of a structlog logger the channel uses."""

    def warning(self, event: str, **fields: Any) -> object: ...


class SignedChannel:
    """Seal and open replication messages on one (replaceable) NATS connection."""

    def __init__(self, trust: Trust, counters: dict[str, int], log: _Log) -> None:
        self.trust = trust
        self.verifier = Verifier(trust, m.MAX_MESSAGE_BYTES + 64 * 1024 + HEADER_BYTES)
        self.nc: NATS | None = None
        self.counters = counters
        counters.setdefault("untrusted_messages", 0)
        counters.setdefault("dropped_messages", 0)
        self._log = log
        self._drop_logs = 0
        self._inbox = ""
        self._tokens = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def attach(self, nc: NATS) -> None:
        """Use ``nc`` from now on (a new connection after a rebuild)."""
        self.nc = nc
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(NatsTimeoutError())
        self._waiting.clear()
        self._inbox = nc.new_inbox()
        await nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    def new_log_period(self) -> None:
        self._drop_logs = 0

    def _connection(self) -> NATS:
        nc = self.nc
        assert nc is not None, "the channel is used before attach()"
        return nc

    # ------------------------------------------------------------------ out
    async def publish(self, subject: str, body: bytes) -> None:
        await self._connection().publish(subject, seal(self.trust, body))

    async def publish_tagged(self, subject: str, body: bytes) -> None:
        """Publish a message every trusted instance reads, with a pair MAC for each trusted
        key (cheaper than a signature for every reader); bound to ``subject``."""
        await self._connection().publish(subject, seal_tagged(self.trust, body, subject))

    async def publish_to(self, subject: str, body: bytes, recipient: bytes) -> None:
        """Publish a message only ``recipient`` (a raw key) reads, under a pair MAC.

        Bound to ``subject``. Signed instead when we share no pair key with ``recipient``
        (``b""``: unknown), so the message still goes out.
        """
        try:
            sealed = seal_for(self.trust, recipient, body, subject)
        except ValueError:
            sealed = seal(self.trust, body)
        await self._connection().publish(subject, sealed)

    async def respond(self, msg: Msg, body: bytes) -> None:
        if msg.reply:
            await self._connection().publish(msg.reply, seal(self.trust, body))

    async def request(self, subject: str, body: bytes, timeout: float) -> Msg:
        """Publish a request bound to a fresh reply subject; the first answer, or a timeout.

        Raises nats-py's ``NoRespondersError`` and ``TimeoutError`` like ``nc.request``.
        """
        reply = f"{self._inbox}.{next(self._tokens)}"
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._waiting[reply] = future
        try:
            await self._connection().publish(subject, seal(self.trust, body, reply), reply=reply)
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise NatsTimeoutError() from None
        finally:
            self._waiting.pop(reply, None)
        if not answer.data and answer.headers and answer.headers.get("Status") == _NO_RESPONDERS:
            raise NoRespondersError()
        return answer

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject, None)
        if future is not None and not future.done():
            future.set_result(msg)

    # ------------------------------------------------------------------ in
    def open(
        self,
        msg: Msg,
        expected: Iterable[m.Kind] | None = None,
        *,
        mac_kinds: Collection[m.Kind] = (),
        tag_kinds: Collection[m.Kind] = (),
    ) -> m.Message | None:
        """The validated message in ``msg``, or None (dropped, counted, maybe logged).

        ``mac_kinds``: the kinds that may come under a pair MAC made for us and bound to
        ``msg.subject`` (acks, on our own ack subject); ``tag_kinds``: the kinds that may come
        tagged for every trusted key, bound to ``msg.subject`` (change batches, on the events
        subject). Any other message must be signed.
        """
        data = msg.data
        only: Collection[m.Kind] | None = None
        how = ""
        try:
            if mac_kinds and data.startswith(MAC_MAGIC):
                only, how = mac_kinds, "a pair MAC"
                signer, body = self.verifier.open_mac(data, msg.subject)
            elif tag_kinds and data.startswith(TAG_MAGIC):
                only, how = tag_kinds, "tags"
                signer, body = self.verifier.open_tagged(data, msg.subject)
            else:
                signer, body = self.verifier.open_signed(data, msg.reply or "")
        except UntrustedMessage as error:
            self._drop("untrusted_messages", msg.subject, error)
            return None
        try:
            message = m.decode(body)
            if only is not None and message.type not in only:
                self._drop(
                    "untrusted_messages",
                    msg.subject,
                    UntrustedMessage(f"{how} on a {message.type.value!r} message"),
                )
                return None
            if expected is not None and message.type not in expected:
                raise m.MessageError(f"unexpected {message.type.value!r} message here")
        except m.MessageError as error:
            self._drop("dropped_messages", msg.subject, error)
            return None
        message.signer = signer
        return message

    def _drop(self, counter: str, subject: str, error: Exception) -> None:
        self.counters[counter] += 1
        if self._drop_logs < DROP_LOGS_PER_PERIOD:
            self._drop_logs += 1
            self._log.warning(
                "replication message dropped", reason=counter, subject=subject, error=str(error)
            )
