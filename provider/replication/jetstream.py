"""Durable replication on a JetStream stream with one message per subject.

The stream ``LATTICECACHE_{prefix}`` (subjects ``lc.{prefix}.>``, at most one message per
subject) always holds the latest merged state of every key, so it *is* the cache's durable copy:
operators choose its storage and replica count on their own cluster, and any instance can
rebuild from it after every provider has stopped.

* **Writes** are acknowledged to the actor only after JetStream acknowledged them. Each publish
  carries the key's full merged state and ``Nats-Expected-Last-Subject-Sequence``; when another
  instance wrote the key in between, the publish is refused, we read the newer state, merge it
  (increments, set adds and list appends from both sides survive the merge) and try again.
  ``Nats-Msg-Id`` lets a retried publish be de-duplicated by the server.
* **Reads** stay local: an ordered consumer replays the stream (last message per subject) at
  start-up, then tails it, merging everything into the in-memory store.

Key names become subject tokens by base64url (reversible, and never a wildcard or separator);
keys too long for a subject are named by their SHA-256. The message body always carries the key,
so an actor's key can never address another subject.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import random
import time
from collections.abc import Callable

import msgpack
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from provider.logs import redact_url
from provider.store import Change, KeyValueStore
from provider.store.codec import ChangeDecodeError, decode_change, encode_change, is_node_id
from provider.supervisor import Supervisor

from . import messages as m
from .acks import AckTracker, report_late
from .base import (
    ReplicationError,
    ReplicationHealth,
    health_grace_secs,
    peer_expiry_secs,
    peer_status,
    running_health,
)
from .bulkload import BulkLoad
from .channel import SignedChannel
from .clockguard import ClockGuard
from .config import ReplicationConfig
from .connection import ConnectionKeeper
from .messages import MAX_MESSAGE_BYTES, Kind
from .peers import PeerTracker
from .signing import HEADER_BYTES, Trust, UntrustedMessage, Verifier, seal

log = structlog.get_logger("provider.replication.jetstream")

FORMAT = 2
#: JetStream's error code for a failed expected-last-subject-sequence check.
WRONG_LAST_SEQUENCE = 10071
#: Optimistic-concurrency attempts per write before the actor gets an error (with jittered
#: backoff these span well under the host's 2 s RPC timeout).
MAX_ATTEMPTS = 10
PUBLISH_TIMEOUT = 2.0
#: base64url tokens longer than this name the key by hash instead (subjects have a size limit).
MAX_TOKEN_CHARS = 1024
CONNECTION_NAME = "wasmCloud KV Cache Provider (JetStream)"
#: A write that arrives while the stream is still being set up waits this long for it.
STARTUP_WAIT_SECS = 5.0
#: Log lines about dropped records, at most, per minute.
DROP_LOGS_PER_MINUTE = 5


def key_token(key: str) -> str:
    """A subject token for ``key``: ``_`` + base64url, or ``h`` + SHA-256 for very long keys."""
    raw = key.encode("utf-8", "surrogatepass")
    token = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    if len(token) <= MAX_TOKEN_CHARS:
        return "_" + token
    return "h" + hashlib.sha256(raw).hexdigest()


def _covers(pattern: str, subject: str) -> bool:
    """Whether the stream subject ``pattern`` captures every subject ``subject`` matches."""
    wanted = subject.split(".")
    for index, token in enumerate(pattern.split(".")):
        if token == ">":
            return True
        if index >= len(wanted) or wanted[index] == ">":
            return False
        if token not in ("*", wanted[index]):
            return False
    return False


def encode_record(change: Change, writer: str = "") -> bytes:
    """The record body: format, change, and the writing node (who to confirm it to).

    Signed separately and bound to its subject: see :func:`seal_record`.
    """
    return msgpack.packb([FORMAT, encode_change(change), writer], use_bin_type=True)


def seal_record(trust: Trust, change: Change, subject: str, writer: str = "") -> bytes:
    """A stream record: signed, and bound to its subject so it cannot be copied to another key."""
    return seal(trust, encode_record(change, writer), subject)


def decode_record(data: bytes) -> Change:
    return decode_record_and_writer(data)[0]


def decode_record_and_writer(data: bytes) -> tuple[Change, str]:
    """The change in a record body and the node that wrote it (``""`` if not a node id)."""
    try:
        version, body, writer = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as error:
        raise ChangeDecodeError(f"not a cache record: {error}") from None
    if version != FORMAT:
        raise ChangeDecodeError(f"unsupported record format {version!r}")
    return decode_change(body), writer if is_node_id(writer) else ""


def stream_name(config: ReplicationConfig) -> str:
    """``LATTICECACHE_{prefix}`` (the prefix is a valid stream-name token: ReplicationConfig)."""
    return f"LATTICECACHE_{config.cache_prefix}"


def stream_subject(config: ReplicationConfig) -> str:
    """The subjects of the stream's records: ``lc.{prefix}.>``."""
    return f"lc.{config.cache_prefix}.>"


def stream_settings(config: ReplicationConfig) -> api.StreamConfig:
    """The stream we create when none exists (issue-specified defaults, operator overrides)."""
    return api.StreamConfig(
        name=stream_name(config),
        subjects=[stream_subject(config)],
        retention=api.RetentionPolicy.LIMITS,
        max_consumers=-1,
        max_msgs_per_subject=1,
        storage=api.StorageType.FILE if config.js_storage == "file" else api.StorageType.MEMORY,
        num_replicas=config.js_replicas,
        max_bytes=config.js_max_bytes,
        duplicate_window=120.0,
    )


class JetStreamReplicator:
    """Keeps the store in step with the lattice-cache stream."""

    name = "jetstream"

    def __init__(
        self,
        store: KeyValueStore,
        config: ReplicationConfig,
        trust: Trust,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.config = config
        self.trust = trust
        self._verifier = Verifier(trust, MAX_MESSAGE_BYTES + HEADER_BYTES + 64 * 1024)
        self.supervisor = Supervisor(clock=clock)
        self._announcing = False
        self._applied_seq = 0
        self._ready = asyncio.Event()
        self._created = clock()
        self._drop_logs: list[float] = []
        self.settings = stream_settings(config)
        self.stream = stream_name(config)
        self._subject = stream_subject(config)
        self._prefix = self._subject[:-1]  # "lc.{prefix}."
        self._clock = clock
        self._js: JetStreamContext | None = None
        self._seqs: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._driving: set[str] = set()
        self._ids = itertools.count(1)
        self._problem: str | None = None
        self._failed = False
        self._replay_target = 0
        self.counters = {
            "writes": 0,
            "conflicts": 0,
            "applied": 0,
            "dropped_messages": 0,
            "untrusted_messages": 0,
            "clock_refused": 0,
        }
        # Read-your-writes (WRITE_ACK=peers): peers announce themselves on a core subject and
        # confirm the stream sequence they applied; a write waits for the live ones (bounded).
        self.node = store.node_id
        self.channel = SignedChannel(trust, self.counters, log)
        # A record stamped too far ahead is refused; its writer hears so on its ack subject.
        self.clock_guard = ClockGuard(
            self.node,
            config.max_clock_offset_ms,
            clock=clock,
            counters=self.counters,
            log=log,
            notify=self._queue_clock_notice,
        )
        self.acks = AckTracker()
        self.peers = PeerTracker(expiry_secs=peer_expiry_secs(config.heartbeat_secs))
        self._ack_subject = f"kvcache.lc.{config.cache_prefix}.ack"
        self._presence_subject = f"kvcache.lc.{config.cache_prefix}.presence"
        #: Writer -> (its raw key, for the ack's pair MAC; the stream sequence to confirm).
        self._acks_due: dict[str, tuple[bytes, int]] = {}
        self.connection = ConnectionKeeper(
            label="jetstream",
            url=config.nats_url,
            options=lambda: config.connect_options(CONNECTION_NAME, ping_interval=2.0),
            clock=clock,
            acks=self.acks,
            supervisor=self.supervisor,
            log=log,
            grace_secs=health_grace_secs(),  # no heartbeat here: the minimum grace
            on_unreachable=self._unreachable,
        )
        self.load = BulkLoad(log)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.store.tombstone_absent_keys = True
        self.supervisor.spawn("jetstream", self._run)

    async def stop(self) -> None:
        await self.connection.stop()

    async def _run(self) -> None:
        """Connect, subscribe and tail the stream; rebuild the connection whenever nats-py
        closes it for good (see :mod:`.connection`)."""
        await self.connection.run(self._set_up)

    async def _set_up(self, nc: NATS, first: bool) -> None:
        """Subscribe on a fresh connection, then tail the stream once it is usable.

        A rebuilt connection replays the stream from the start (merging is idempotent), as at
        start-up.
        """
        await self.channel.attach(nc)
        await nc.subscribe(f"{self._ack_subject}.{self.node}", cb=self._on_ack)
        await nc.subscribe(self._presence_subject, cb=self._on_presence)
        self._js = nc.jetstream(domain=self.config.js_domain)
        delay = 1.0
        while not self.connection.closed_for_good and not await self._start_tailing():
            # Leader elections and restarts are transient; a missing JetStream or an
            # unusable stream may be fixed by the operator. Meanwhile we serve local state
            # (see health).
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _unreachable(self, error: Exception) -> None:
        url = redact_url(self.config.nats_url)
        self._problem = f"JetStream server {url} unreachable: {error}"

    @property
    def _jetstream(self) -> JetStreamContext:
        """The JetStream context of the current connection (made before anything uses it)."""
        if self._js is None:
            raise ReplicationError("replication: not connected to JetStream yet")
        return self._js

    async def _start_tailing(self) -> bool:
        """Check the stream and start the replay-then-tail consumer; False on failure."""
        try:
            info = await self._ensure_stream()
            self._replay_target = info.state.last_seq
            self.load.begin()  # the cyclic GC pauses until the replay ends (see .bulkload)
            await self._jetstream.subscribe(
                f"{self._prefix}>",
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                cb=self._on_record,
            )
        except Exception as error:
            self.load.abandon()
            reason = str(error) or type(error).__name__
            problem = (
                f"JetStream unavailable for stream {self.stream}: {reason}; "
                "serving local state only, retrying"
            )
            if problem != self._problem:
                log.error("jetstream mode cannot run yet", error=problem)
            self._problem = problem
            self._failed = True  # a plain local map until it works, as the health message says
            return False
        if self._failed:
            log.info("jetstream mode running", stream=self.stream)
        self._problem = None
        self._failed = False
        self._ready.set()
        if info.state.messages == 0:
            self._finish_replay()
        return True

    async def _ensure_stream(self) -> api.StreamInfo:
        """Use an existing stream exactly as it is; create ours only when there is none."""
        jsm = self._jetstream
        try:
            info = await jsm.stream_info(self.stream)
        except NotFoundError:
            info = await jsm.add_stream(self.settings)
            log.info(
                "lattice cache stream created",
                stream=self.stream,
                storage=str(self.settings.storage),
                replicas=self.settings.num_replicas,
            )
            return info
        existing = info.config
        wanted = self._subject
        if not any(_covers(pattern, wanted) for pattern in existing.subjects or ()):
            raise ReplicationError(
                f"the existing stream's subjects {existing.subjects} do not capture {wanted}"
            )
        log.info(
            "using existing lattice cache stream as it is",
            stream=self.stream,
            subjects=existing.subjects,
            storage=str(existing.storage),
            replicas=existing.num_replicas,
            max_msgs_per_subject=existing.max_msgs_per_subject,
            max_bytes=existing.max_bytes,
        )
        if existing.max_msgs_per_subject != 1:
            log.warning(
                "LATTICE CACHE STREAM KEEPS MORE THAN ONE MESSAGE PER SUBJECT: it grows with "
                "every write; recreate it with max_msgs_per_subject=1",
                stream=self.stream,
                max_msgs_per_subject=existing.max_msgs_per_subject,
            )
        return info

    # ------------------------------------------------------------------ writes
    def publish(self, change: Change) -> asyncio.Future[None] | None:
        """Return an awaitable that completes once JetStream holds the key's merged state."""
        if self._failed:
            return None  # the stream is unusable: serve local state only (health reports it)
        return self._persist(change.key)

    def _persist(self, key: str) -> asyncio.Future[None]:
        """Group commit: writes to one key that arrive while its publish is under way all ride
        the next publish, which carries every one of them (it sends the key's whole merged
        state). One instance then never races itself, and hot keys need far fewer publishes."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append(future)
        if key not in self._driving:
            self._driving.add(key)
            self.supervisor.run_once("jetstream-write", self._drive(key))
        return future

    async def _wait_until_ready(self) -> None:
        """Hold a write made during start-up until the stream is usable (bounded)."""
        if self._ready.is_set():
            return
        remaining = STARTUP_WAIT_SECS - (self._clock() - self._created)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), max(remaining, 0.5))
        if not self._ready.is_set():
            reason = self._problem or f"JetStream not ready after {STARTUP_WAIT_SECS:.0f} s"
            raise ReplicationError(f"replication: {reason}")

    async def _drive(self, key: str) -> None:
        try:
            try:
                await self._wait_until_ready()
            except ReplicationError as error:
                for future in self._waiting.pop(key, []):
                    if not future.done():
                        future.set_exception(error)
                return
            while batch := self._waiting.pop(key, None):
                try:
                    seq = await self._publish_merged(key)
                    await self._await_peers(seq)
                except Exception as error:
                    for future in batch:
                        if not future.done():
                            future.set_exception(error)
                else:
                    for future in batch:
                        if not future.done():
                            future.set_result(None)
        finally:
            self._driving.discard(key)

    async def _publish_merged(self, key: str) -> int:
        """Publish the key's merged state; returns its stream sequence."""
        subject = self._prefix + key_token(key)
        write_id = next(self._ids)
        for attempt in range(MAX_ATTEMPTS):
            entry = self.store.entry(key)
            if entry is None:  # forgotten meanwhile (a tombstone past its horizon)
                raise ReplicationError("replication: the key is no longer held; nothing to store")
            body = seal_record(self.trust, Change(key, entry), subject, self.node)
            headers = {
                "Nats-Expected-Last-Subject-Sequence": str(self._seqs.get(subject, 0)),
                "Nats-Msg-Id": f"{self.store.node_id}-{write_id}-{attempt}",
            }
            try:
                ack = await self._jetstream.publish(
                    subject, body, timeout=PUBLISH_TIMEOUT, stream=self.stream, headers=headers
                )
            except APIError as error:
                if error.err_code != WRONG_LAST_SEQUENCE:
                    raise ReplicationError(
                        f"replication: JetStream refused the write: {error}"
                    ) from None
                self.counters["conflicts"] += 1
                await self._reload(subject)
                await asyncio.sleep(random.uniform(0, 0.002 * 2**attempt))  # de-synchronise racers
                continue
            except Exception as error:
                reason = str(error) or type(error).__name__
                raise ReplicationError(
                    f"replication: write not acknowledged by JetStream: {reason}"
                ) from None
            self._note_seq(subject, ack.seq)
            self.counters["writes"] += 1
            return ack.seq
        raise ReplicationError("replication: too many concurrent writers on this key; try again")

    async def _reload(self, subject: str) -> None:
        """Merge the stream's current state of ``subject`` after losing a write race."""
        try:
            raw = await self._jetstream.get_last_msg(self.stream, subject)
        except NotFoundError:
            self._seqs.pop(subject, None)  # purged meanwhile: expect an empty subject
            return
        if raw.seq is None:  # not a stored message: nothing to merge, no sequence to note
            return
        self._apply(raw.data or b"", subject, raw.seq)

    async def _await_peers(self, seq: int) -> None:
        """Hold the write until every live, non-lagging peer applied stream sequence ``seq``."""
        if self.config.write_ack != "peers":
            return
        targets = self.acks.targets(p.node for p in self.peers.live(self._clock()))
        if not targets:
            return
        confirmed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.acks.expect(seq, targets, [confirmed])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(confirmed), self.config.write_ack_timeout_ms / 1000
            )
        report_late(log, self.acks.expire(seq), self.config.write_ack_timeout_ms)

    async def _on_ack(self, msg: Msg) -> None:
        """Messages addressed to this writer: acks of applied records, and clock notices."""
        message = self.channel.open(msg, (Kind.ACK, Kind.CLOCK_REFUSED), mac_kinds=m.MAC_KINDS)
        if message is None:
            return
        if message.type == Kind.CLOCK_REFUSED:
            self.clock_guard.refused_by(message.node, message.ahead_ms)
            return
        if not message.acks:
            return
        self.peers.saw(message.node, self._clock())
        self.acks.acked_up_to(message.node, max(message.acks))

    async def _on_presence(self, msg: Msg) -> None:
        message = self.channel.open(msg, (Kind.ACK,))
        if message is not None and message.node != self.node:
            self.peers.saw(message.node, self._clock())
            if message.acks:  # how far it has applied the stream: a lagging peer catches up
                self.acks.acked_up_to(message.node, max(message.acks))

    async def _announce_forever(self) -> None:
        """Tell writers we tail the stream (after our replay), and how far, once per period."""
        while True:
            applied = [self._applied_seq] if self._applied_seq else []
            beacon = m.encode(m.Message(Kind.ACK, self.node, acks=applied))
            with contextlib.suppress(Exception):
                await self.channel.publish(self._presence_subject, beacon)
            self.acks.forget(p.node for p in self.peers.live(self._clock()))
            await asyncio.sleep(self.config.heartbeat_secs)

    def _queue_ack(self, writer: str, seq: int, key: bytes = b"") -> None:
        """Confirm to ``writer`` (whose record ``key`` signed) that we applied up to ``seq``."""
        first = not self._acks_due
        _, due = self._acks_due.get(writer, (key, 0))
        self._acks_due[writer] = (key, max(seq, due))
        if first:
            self.supervisor.run_once("jetstream-acks", self._send_acks())

    async def _send_acks(self) -> None:
        await asyncio.sleep(0)  # one ack per writer for all records of this turn
        due, self._acks_due = self._acks_due, {}
        for writer, (key, seq) in due.items():
            ack = m.encode(m.Message(Kind.ACK, self.node, acks=[seq]))
            with contextlib.suppress(Exception):  # under a pair MAC only ``key`` can check
                await self.channel.publish_to(f"{self._ack_subject}.{writer}", ack, key)

    def _queue_clock_notice(self, writer: str, notice: bytes) -> None:
        """Tell ``writer`` we refuse its stamps (rate-limited by the clock guard)."""
        self.supervisor.run_once("jetstream-clock-notice", self._send_clock_notice(writer, notice))

    async def _send_clock_notice(self, writer: str, notice: bytes) -> None:
        with contextlib.suppress(Exception):  # disconnected: the next refused record retries
            await self.channel.publish(f"{self._ack_subject}.{writer}", notice)

    # ------------------------------------------------------------------ reads
    async def _on_record(self, msg: Msg) -> None:
        meta = msg.metadata
        writer, signer = self._apply(msg.data, msg.subject, meta.sequence.stream)
        self._applied_seq = max(self._applied_seq, meta.sequence.stream)
        if writer and writer != self.node:
            self._queue_ack(writer, meta.sequence.stream, signer)
        if not self.load.loading:
            return
        if meta.num_pending == 0 or meta.sequence.stream >= self._replay_target:
            self._finish_replay()
        elif self.counters["applied"] % 4096 == 0:
            self.load.progress(self.counters["applied"], meta.num_pending)

    def _apply(self, data: bytes, subject: str, seq: int) -> tuple[str, bytes]:
        """Merge one stream record, if it is trusted and valid: its writer and signer's key.

        Its sequence is noted even when it is dropped: it *is* the subject's latest message, so
        our next write on that key replaces it (a forged record must not wedge the key).
        """
        self._note_seq(subject, seq)
        try:
            signer, body = self._verifier.open_signed(data, subject)
            change, writer = decode_record_and_writer(body)
        except UntrustedMessage as error:
            self._drop("untrusted_messages", subject, str(error))
            return "", b""
        except ChangeDecodeError as error:
            self._drop("dropped_messages", subject, str(error))
            return "", b""
        if self._prefix + key_token(change.key) != subject:
            self._drop("dropped_messages", subject, "the record names another key")
            return "", b""
        if not self.clock_guard.allows(writer, [change]):
            return "", b""  # counted, logged once per writer, and the writer told
        self.store.apply(change)
        self.counters["applied"] += 1
        return writer, signer

    def _drop(self, counter: str, subject: str, reason: str) -> None:
        self.counters[counter] += 1
        now = self._clock()
        self._drop_logs = [t for t in self._drop_logs if now - t < 60.0]
        if len(self._drop_logs) < DROP_LOGS_PER_MINUTE:
            self._drop_logs.append(now)
            log.warning("cache record dropped", reason=counter, subject=subject, error=reason)

    def _note_seq(self, subject: str, seq: int) -> None:
        if seq > self._seqs.get(subject, 0):
            self._seqs[subject] = seq

    def _finish_replay(self) -> None:
        seconds = self.load.finish()
        log.info("stream replay complete", keys=len(self._seqs), seconds=round(seconds, 3))
        if not self._announcing:
            self._announcing = True
            self.supervisor.spawn("jetstream-presence", self._announce_forever)

    # ------------------------------------------------------------------ health
    def health(self) -> ReplicationHealth:
        if self._problem is not None:
            return ReplicationHealth(False, self._problem)
        crashed = self.supervisor.problem()
        if crashed:
            return ReplicationHealth(False, crashed)
        refused = self.clock_guard.problem()
        if refused:
            return ReplicationHealth(False, refused)
        if self.connection.outage() is not None:
            return ReplicationHealth(
                False,
                f"JetStream connection to {redact_url(self.config.nats_url)} down; "
                "serving local state",
            )
        return running_health(self.load.loading, self.clock_guard, self.acks)

    def status(self) -> dict[str, object]:
        return {
            "mode": self.name,
            "node": self.node,
            "stream": self.stream,
            **peer_status(
                connected=self.connection.connected,
                replaying=self.load.loading,
                write_ack=self.config.write_ack,
                peers=[p.node for p in self.peers.live(self._clock())],
                clock_guard=self.clock_guard,
                acks=self.acks,
            ),
            "keys_in_stream": len(self._seqs),
            "replay_seconds": self.load.seconds,
            **self.counters,
        }
