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
import gc
import hashlib
import itertools
import random
import time
from collections.abc import Callable

import msgpack
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from provider.logs import redact_url
from provider.natsconn import connect_forever
from provider.store import Change, KeyValueStore
from provider.store.codec import ChangeDecodeError, decode_change, encode_change

from .base import ReplicationError, ReplicationHealth
from .config import ReplicationConfig

log = structlog.get_logger("provider.replication.jetstream")

FORMAT = 1
#: JetStream's error code for a failed expected-last-subject-sequence check.
WRONG_LAST_SEQUENCE = 10071
#: Optimistic-concurrency attempts per write before the actor gets an error (with jittered
#: backoff these span well under the host's 2 s RPC timeout).
MAX_ATTEMPTS = 10
PUBLISH_TIMEOUT = 2.0
#: base64url tokens longer than this name the key by hash instead (subjects have a size limit).
MAX_TOKEN_CHARS = 1024
CONNECTION_NAME = "wasmCloud KV Cache Provider (JetStream)"


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


def encode_record(change: Change) -> bytes:
    return msgpack.packb([FORMAT, encode_change(change)], use_bin_type=True)


def decode_record(data: bytes) -> Change:
    try:
        version, body = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as error:
        raise ChangeDecodeError(f"not a cache record: {error}") from None
    if version != FORMAT:
        raise ChangeDecodeError(f"unsupported record format {version!r}")
    return decode_change(body)


def stream_settings(config: ReplicationConfig) -> api.StreamConfig:
    """The stream we create when none exists (issue-specified defaults, operator overrides)."""
    prefix = config.cache_prefix  # already a valid stream-name token (ReplicationConfig)
    return api.StreamConfig(
        name=f"LATTICECACHE_{prefix}",
        subjects=[f"lc.{prefix}.>"],
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
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.config = config
        self.settings = stream_settings(config)
        self.stream = self.settings.name
        self._prefix = self.settings.subjects[0][:-1]  # "lc.{prefix}."
        self._clock = clock
        self._nc: NATS | None = None
        self._js = None
        self._seqs: dict[str, int] = {}
        self._waiting: dict[str, list[asyncio.Future]] = {}
        self._driving: set[str] = set()
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task] = []
        self._problem: str | None = None
        self._failed = False
        self._down_since: float | None = clock()
        self._replaying = True
        self._replay_target = 0
        self.counters = {"writes": 0, "conflicts": 0, "applied": 0, "dropped_messages": 0}
        self.replay_seconds: float | None = None
        self._last_progress_log = 0.0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.store.tombstone_absent_keys = True
        self._tasks.append(asyncio.create_task(self._run(), name="jetstream"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), timeout=2)

    async def _run(self) -> None:
        cfg = self.config

        def report(error: Exception) -> None:
            self._problem = f"JetStream server {redact_url(cfg.nats_url)} unreachable: {error}"
            log.warning(
                "jetstream server unreachable", url=redact_url(cfg.nats_url), error=str(error)
            )

        self._nc = await connect_forever(
            cfg.connect_options(CONNECTION_NAME, ping_interval=2.0),
            report,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        self._down_since = None
        self._js = self._nc.jetstream(domain=cfg.js_domain)
        delay = 1.0
        while not await self._start_tailing():
            # Leader elections and restarts are transient; a missing JetStream or an unusable
            # stream may be fixed by the operator. Meanwhile we serve local state (see health).
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _start_tailing(self) -> bool:
        """Check the stream and start the replay-then-tail consumer; False on failure."""
        try:
            info = await self._ensure_stream()
            started = time.perf_counter()
            self._replay_target = info.state.last_seq
            self._replay_started = started
            gc.disable()  # see NatsReplicator._replay: bulk loads and the cyclic GC don't mix
            await self._js.subscribe(
                f"{self._prefix}>",
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                cb=self._on_record,
            )
        except Exception as error:
            gc.enable()
            problem = (
                f"JetStream unavailable for stream {self.stream}: {error or type(error).__name__}; "
                "serving local state only, retrying"
            )
            if problem != self._problem:
                log.error("jetstream mode cannot run yet", error=problem)
            self._problem = problem
            self._failed = True  # a plain local map until it works, as the health message says
            self._replaying = False
            return False
        if self._failed:
            log.info("jetstream mode running", stream=self.stream)
        self._problem = None
        self._failed = False
        self._replaying = True
        if info.state.messages == 0:
            self._finish_replay(started)
        return True

    async def _ensure_stream(self) -> api.StreamInfo:
        """Use an existing stream exactly as it is; create ours only when there is none."""
        jsm = self._js
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
        wanted = self.settings.subjects[0]
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
    def publish(self, change: Change):
        """Return an awaitable that completes once JetStream holds the key's merged state."""
        if self._failed:
            return None  # the stream is unusable: serve local state only (health reports it)
        return self._persist(change.key)

    def _persist(self, key: str) -> asyncio.Future:
        """Group commit: writes to one key that arrive while its publish is under way all ride
        the next publish, which carries every one of them (it sends the key's whole merged
        state). One instance then never races itself, and hot keys need far fewer publishes."""
        future = asyncio.get_running_loop().create_future()
        if self._js is None:
            future.set_exception(
                ReplicationError(f"replication: {self._problem or 'JetStream not ready'}")
            )
            return future
        self._waiting.setdefault(key, []).append(future)
        if key not in self._driving:
            self._driving.add(key)
            task = asyncio.create_task(self._drive(key))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        return future

    async def _drive(self, key: str) -> None:
        try:
            while batch := self._waiting.pop(key, None):
                try:
                    await self._publish_merged(key)
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

    async def _publish_merged(self, key: str) -> None:
        subject = self._prefix + key_token(key)
        write_id = next(self._ids)
        for attempt in range(MAX_ATTEMPTS):
            entry = self.store.entry(key)
            body = encode_record(Change(key, entry))
            headers = {
                "Nats-Expected-Last-Subject-Sequence": str(self._seqs.get(subject, 0)),
                "Nats-Msg-Id": f"{self.store.node_id}-{write_id}-{attempt}",
            }
            try:
                ack = await self._js.publish(
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
            return
        raise ReplicationError("replication: too many concurrent writers on this key; try again")

    async def _reload(self, subject: str) -> None:
        """Merge the stream's current state of ``subject`` after losing a write race."""
        try:
            raw = await self._js.get_last_msg(self.stream, subject)
        except NotFoundError:
            self._seqs.pop(subject, None)  # purged meanwhile: expect an empty subject
            return
        self._apply(raw.data, subject, raw.seq)

    # ------------------------------------------------------------------ reads
    async def _on_record(self, msg: Msg) -> None:
        meta = msg.metadata
        self._apply(msg.data, msg.subject, meta.sequence.stream)
        if not self._replaying:
            return
        if meta.num_pending == 0 or meta.sequence.stream >= self._replay_target:
            self._finish_replay(self._replay_started)
        elif self.counters["applied"] % 4096 == 0:
            self._log_progress(meta.num_pending)

    def _log_progress(self, pending: int) -> None:
        """About once a second during a large replay: keys merged per second and an ETA."""
        now = time.perf_counter()
        if now - self._last_progress_log < 1.0:
            return
        self._last_progress_log = now
        rate = self.counters["applied"] / max(now - self._replay_started, 1e-9)
        log.info(
            "replay progress",
            merged=self.counters["applied"],
            keys_per_sec=int(rate),
            eta_secs=round(pending / rate, 1) if rate else None,
        )

    def _apply(self, data: bytes, subject: str, seq: int) -> None:
        try:
            change = decode_record(data)
        except ChangeDecodeError as error:
            self.counters["dropped_messages"] += 1
            log.warning("cache record dropped", subject=subject, error=str(error))
            return
        if self._prefix + key_token(change.key) != subject:
            self.counters["dropped_messages"] += 1
            log.warning("cache record names another key than its subject; dropped", subject=subject)
            return
        self.store.apply(change)
        self._note_seq(subject, seq)
        self.counters["applied"] += 1

    def _note_seq(self, subject: str, seq: int) -> None:
        if seq > self._seqs.get(subject, 0):
            self._seqs[subject] = seq

    def _finish_replay(self, started: float) -> None:
        gc.freeze()
        gc.enable()
        self._replaying = False
        self.replay_seconds = time.perf_counter() - started
        log.info(
            "stream replay complete", keys=len(self._seqs), seconds=round(self.replay_seconds, 3)
        )

    # ------------------------------------------------------------------ health
    def health(self) -> ReplicationHealth:
        if self._problem is not None:
            return ReplicationHealth(False, self._problem)
        if self._down_since is not None and self._clock() - self._down_since > 5.0:
            return ReplicationHealth(
                False,
                f"JetStream connection to {redact_url(self.config.nats_url)} down; "
                "serving local state",
            )
        if self._replaying:
            return ReplicationHealth(True, "replaying")
        return ReplicationHealth(True)

    def status(self) -> dict:
        return {
            "mode": self.name,
            "stream": self.stream,
            "connected": self._down_since is None,
            "replaying": self._replaying,
            "keys_in_stream": len(self._seqs),
            "replay_seconds": self.replay_seconds,
            **self.counters,
        }

    async def _on_disconnected(self) -> None:
        if self._down_since is None:
            self._down_since = self._clock()

    async def _on_reconnected(self) -> None:
        self._down_since = None
