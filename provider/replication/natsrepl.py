"""Replication over plain NATS (no JetStream): live deltas, snapshot replay, anti-entropy.

Three mechanisms, each covering what the one before cannot:

1. **Live deltas.** Each local change is batched (one message per event-loop turn, cut at
   :data:`~.messages.CHUNK_TARGET_BYTES`) and published on the events subject. Batches are
   numbered, so a receiver notices a lost one.
2. **Snapshot replay.** A starting instance subscribes to the events first, then asks the replay
   subject (a queue group: one peer answers) for a snapshot and *pulls* it in bounded chunks, one
   request per chunk, which is its flow control. It merges the chunks like any other change.
3. **Anti-entropy.** Every period each instance publishes its 1024 bucket digests. A peer whose
   digests differ sends its 64 sub-bucket digests of each differing bucket; the answer carries
   the other side's entries of the sub-buckets that differ, and the asker pushes its own for the
   same sub-buckets, which completes both sides. Of each pair only the node with the smaller id
   asks, so entries cross once; the other prods it by publishing its digests early. Traffic is
   proportional to what differs. A numbering gap, or a reconnect, triggers a round at once
   instead of waiting for the period.

Merging is idempotent and commutative (:mod:`provider.store.entry`), so duplicates, reordering
and overlap between the three paths are harmless. While NATS is unreachable the store keeps
serving; publishes are dropped and anti-entropy reconciles after the reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from provider.logs import redact_url
from provider.natsconn import connect_forever
from provider.store import Change, KeyValueStore
from provider.store.hlc import wall_ms

from . import exchange
from . import messages as m
from .base import ReplicationHealth
from .config import ReplicationConfig
from .peers import PeerTracker, differing_buckets

log = structlog.get_logger("provider.replication")

#: How long a starting instance waits for any peer to offer a snapshot.
REPLAY_OFFER_TIMEOUT = 1.0
#: How long one snapshot chunk or repair answer may take.
REQUEST_TIMEOUT = 5.0
#: Replication may be down this long (or two periods, if longer) before health says so.
MIN_GRACE_SECS = 5.0
#: Let in-flight deltas land before comparing buckets, so they aren't mistaken for loss.
SETTLE_SECS = 0.05
#: At most one early (gap-triggered) anti-entropy round per this many seconds.
EARLY_ROUND_MIN_INTERVAL = 0.5
#: Cap on log lines about dropped messages, per anti-entropy period.
DROP_LOGS_PER_PERIOD = 5

#: A silently dead (blackholed) link is noticed after two unanswered pings (~6 s); the health
#: grace counts from then.
PING_INTERVAL_SECS = 2.0

CONNECTION_NAME = "wasmCloud KV Cache Provider"


class NatsReplicator:
    """Keeps one store in step with its peers on a plain NATS server."""

    name = "nats"

    def __init__(
        self,
        store: KeyValueStore,
        config: ReplicationConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.config = config
        self.node = store.node_id
        self._clock = clock
        self._nc: NATS | None = None
        self._stopping = False
        self._pending: list[Change] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._repairing: set[str] = set()
        self._seq = 0
        self._digest_subject = f"{config.events_subject}.digest"
        self._direct_prefix = f"{config.replay_subject}.node"
        # A lost repair message must not hold up repairs with that peer for several periods.
        self._repair_timeout = min(REQUEST_TIMEOUT, max(1.0, config.heartbeat_secs))
        self.peers = PeerTracker(expiry_secs=max(3 * config.heartbeat_secs, 15.0))
        self._down_since: float | None = clock()
        self._replaying = True
        self._last_early_round = 0.0
        self._early_round_pending = False
        self._drop_logs = 0
        self.counters = {
            "batches_sent": 0,
            "changes_sent": 0,
            "changes_received": 0,
            "dropped_messages": 0,
            "repairs": 0,
            "repair_changes_in": 0,
            "repair_changes_out": 0,
            "repair_bytes": 0,
            "snapshot_keys": 0,
        }
        self.last_anti_entropy: float | None = None
        self.lag_ms: float | None = None
        self.replay_seconds: float | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.store.track_digests()
        self.store.tombstone_absent_keys = True  # a Del overtaking its value still deletes it
        self._tasks.append(asyncio.create_task(self._run(), name="replication"))

    async def stop(self) -> None:
        self._stopping = True  # the disconnect that follows is ours: not worth a warning
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._nc is not None and not self._nc.is_closed:
            with contextlib.suppress(Exception):
                await self._flush_pending()
                await asyncio.wait_for(self._nc.close(), timeout=2)

    async def _run(self) -> None:
        self._nc = await self._connect()
        nc = self._nc
        await nc.subscribe(self.config.events_subject, cb=self._on_batch)
        await nc.subscribe(self._digest_subject, cb=self._on_digest)
        await nc.subscribe(f"{self._direct_prefix}.{self.node}", cb=self._on_direct)
        self._tasks.append(asyncio.create_task(self._flush_forever(), name="replication-flush"))
        await self._replay()
        await nc.subscribe(
            self.config.replay_subject, queue="kvcache-replay", cb=self._on_snapshot_hello
        )
        self._tasks.append(asyncio.create_task(self._anti_entropy_forever(), name="anti-entropy"))

    async def _connect(self) -> NATS:
        cfg = self.config

        def report(error: Exception) -> None:
            log.warning(
                "replication server unreachable", url=redact_url(cfg.nats_url), error=str(error)
            )

        nc = await connect_forever(
            cfg.connect_options(CONNECTION_NAME, no_echo=True, ping_interval=PING_INTERVAL_SECS),
            report,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
        )
        self._down_since = None
        log.info("replication connected", url=redact_url(cfg.nats_url), node=self.node)
        return nc

    # ------------------------------------------------------------------ live deltas
    def publish(self, change: Change) -> None:
        self._pending.append(change)
        self._wake.set()

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        """Publish everything pending as numbered batches; never blocks the RPC path."""
        pending, self._pending = self._pending, []
        batch = m.Batch()
        for change in pending:
            packed = m.pack_change(change)
            if not batch.fits(packed):
                if batch.count:
                    await self._send_batch(batch)
                if not batch.fits(packed):
                    log.warning(
                        "change too large to replicate; anti-entropy skips it too",
                        key_bytes=len(change.key),
                        size=len(packed),
                    )
                    continue
            batch.add(packed)
        if batch.count:
            await self._send_batch(batch)

    async def _send_batch(self, batch: m.Batch) -> None:
        count = batch.count
        self._seq += 1
        message = m.Message("ch", self.node, seq=self._seq, sent_ms=wall_ms())
        body = m.encode(message, batch.take())
        try:
            await self._nc.publish(self.config.events_subject, body)
        except Exception as error:  # disconnected: anti-entropy repairs after the reconnect
            log.debug("change batch not sent", error=str(error))
            return
        self.counters["batches_sent"] += 1
        self.counters["changes_sent"] += count

    async def _on_batch(self, msg: Msg) -> None:
        message = self._decode(msg, "ch")
        if message is None or message.node == self.node:
            return
        if self.peers.saw_batch(message.node, message.seq, self._clock()):
            self._early_round()
        for change in message.changes:
            self.store.apply(change)
        self.counters["changes_received"] += len(message.changes)
        if message.sent_ms:  # wall clocks of peers differ a little; good enough for a lag gauge
            lag = max(wall_ms() - message.sent_ms, 0)
            self.lag_ms = lag if self.lag_ms is None else 0.9 * self.lag_ms + 0.1 * lag

    # ------------------------------------------------------------------ anti-entropy
    async def _anti_entropy_forever(self) -> None:
        while True:
            await self._publish_digest()
            self._drop_logs = 0
            await asyncio.sleep(self.config.heartbeat_secs)

    async def _publish_digest(self) -> None:
        digests = self.store.track_digests()
        body = m.encode(m.Message("dg", self.node, seq=self._seq, digests=digests))
        with contextlib.suppress(Exception):
            await self._nc.publish(self._digest_subject, body)

    def _early_round(self) -> None:
        """Publish our digests soon, so peers compare and repair without waiting a period.

        Rate-limited, but never dropped: a request inside the minimum interval is postponed to
        its end, so the last loss of a burst is repaired promptly too.
        """
        if self._early_round_pending:
            return
        wait = self._last_early_round + EARLY_ROUND_MIN_INTERVAL - self._clock()
        self._early_round_pending = True
        asyncio.get_running_loop().call_later(max(wait, 0.0), self._run_early_round)

    def _run_early_round(self) -> None:
        self._early_round_pending = False
        self._last_early_round = self._clock()
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._publish_digest()))

    async def _on_digest(self, msg: Msg) -> None:
        message = self._decode(msg, "dg")
        if message is None or message.node == self.node or self._replaying:
            return
        peer = message.node
        self.peers.saw_digest(peer, message.seq, self._clock())
        differing = differing_buckets(self.store.track_digests(), message.digests)
        if differing and peer < self.node:
            # One side of each pair repairs (the smaller node id), so buckets cross once. We
            # prod it with our digests instead of waiting for its next period.
            self._early_round()
        elif differing and peer not in self._repairing:
            self._repairing.add(peer)
            task = asyncio.create_task(self._repair(peer, differing))
            task.add_done_callback(lambda _: self._repairing.discard(peer))
        elif not differing:
            self.last_anti_entropy = time.time()

    async def _repair(self, peer: str, candidates: list[int]) -> None:
        """Reconcile the differing buckets with ``peer``, in bounded messages.

        We send our sub-bucket digests of those buckets; the peer answers with its entries of
        the sub-buckets that differ and names them; we merge those and push ours for the same
        sub-buckets. Both sides then hold the union, and only differing sub-buckets travelled.
        """
        await asyncio.sleep(SETTLE_SECS)
        self.counters["repairs"] += 1
        subject = f"{self._direct_prefix}.{peer}"
        remaining = list(candidates)
        while remaining:
            buckets = remaining[: m.MAX_REPAIR_BUCKETS]
            request = exchange.repair_request(self.store, self.node, buckets)
            try:
                reply = await self._nc.request(subject, request, timeout=self._repair_timeout)
            except Exception as error:
                log.info("repair with peer interrupted", peer=peer, error=str(error))
                return
            answer = self._decode(reply, "rp")
            if answer is None or not answer.buckets:
                return  # no progress; the next period tries again
            self.counters["repair_bytes"] += len(request) + len(reply.data)
            self._apply_all(answer.changes, "repair_changes_in")
            await self._push(subject, answer.subs)
            covered = set(answer.buckets)
            remaining = [index for index in remaining if index not in covered]
        self.last_anti_entropy = time.time()

    async def _push(self, subject: str, subs: list[int]) -> None:
        """Send our entries of the sub-buckets the peer named (no reply expected)."""
        for body, count in exchange.repair_pushes(self.store, self.node, subs):
            self.counters["repair_changes_out"] += count
            self.counters["repair_bytes"] += len(body)
            with contextlib.suppress(Exception):
                await self._nc.publish(subject, body)

    async def _on_direct(self, msg: Msg) -> None:
        """Messages addressed to this node: repair exchanges and snapshot pulls."""
        message = self._decode(msg, None)
        if message is None:
            return
        if message.type == "pu":
            self._apply_all(message.changes, "repair_changes_in")
            return
        if not msg.reply:
            return
        if message.type == "rr":
            body, count = exchange.repair_reply(self.store, self.node, message)
            self.counters["repair_changes_out"] += count
            self.counters["repair_bytes"] += len(body) + len(msg.data)
        elif message.type == "sp":
            body = exchange.snapshot_chunk(
                self.store, self.node, message.buckets[0], message.offset
            )
        else:
            return
        with contextlib.suppress(Exception):
            await self._nc.publish(msg.reply, body)

    def _apply_all(self, changes: list[Change], counter: str) -> None:
        for change in changes:
            self.store.apply(change)
        self.counters[counter] += len(changes)

    # ------------------------------------------------------------------ snapshot replay
    async def _on_snapshot_hello(self, msg: Msg) -> None:
        message = self._decode(msg, "sr")
        if message is None or message.node == self.node or not msg.reply:
            return
        offer = m.Message("so", self.node, keys=len(self.store))
        with contextlib.suppress(Exception):
            await self._nc.publish(msg.reply, m.encode(offer))

    async def _replay(self) -> None:
        """Pull a snapshot from one peer; with nobody answering, start from what we have."""
        started = time.perf_counter()
        # A snapshot creates millions of long-lived, acyclic objects; letting the cyclic garbage
        # collector rescan them as they pile up costs ~40% of replay time. Pause it, then move
        # the loaded state out of its sight for good.
        gc.disable()
        try:
            hello = m.encode(m.Message("sr", self.node))
            try:
                reply = await self._nc.request(
                    self.config.replay_subject, hello, timeout=REPLAY_OFFER_TIMEOUT
                )
            except (NoRespondersError, NatsTimeoutError):
                log.info("no peer offered a snapshot; starting from local state")
                return
            offer = self._decode(reply, "so")
            if offer is None:
                return
            log.info("replaying snapshot", peer=offer.node, keys=offer.keys)
            await self._pull_snapshot(offer.node, offer.keys, started)
        except Exception as error:
            log.warning("snapshot replay incomplete; anti-entropy will fill in", error=str(error))
        finally:
            gc.freeze()
            gc.enable()
            self._replaying = False
            self.replay_seconds = time.perf_counter() - started

    async def _pull_snapshot(self, peer: str, expected: int, started: float) -> None:
        bucket, offset, merged, last_log = 0, 0, 0, started
        subject = f"{self._direct_prefix}.{peer}"
        while True:
            pull = m.encode(m.Message("sp", self.node, buckets=[bucket], offset=offset))
            reply = await self._nc.request(subject, pull, timeout=REQUEST_TIMEOUT)
            chunk = self._decode(reply, "sc")
            if chunk is None:
                return
            for change in chunk.changes:
                self.store.apply(change)
            merged += len(chunk.changes)
            self.counters["snapshot_keys"] = merged
            now = time.perf_counter()
            if now - last_log >= 1.0:
                last_log = now
                rate = merged / (now - started)
                eta = max(expected - merged, 0) / rate if rate else None
                log.info(
                    "replay progress",
                    merged=merged,
                    keys_per_sec=int(rate),
                    eta_secs=None if eta is None else round(eta, 1),
                )
            if chunk.end:
                elapsed = time.perf_counter() - started
                log.info("replay complete", keys=merged, seconds=round(elapsed, 3))
                return
            bucket, offset = chunk.buckets[0], chunk.offset

    # ------------------------------------------------------------------ health & status
    def health(self) -> ReplicationHealth:
        if self._down_since is not None:
            down_for = self._clock() - self._down_since
            grace = max(MIN_GRACE_SECS, 2 * self.config.heartbeat_secs)
            if down_for > grace:
                return ReplicationHealth(
                    False,
                    f"replication to {redact_url(self.config.nats_url)} down for {down_for:.0f}s; "
                    "serving local state",
                )
        if self._replaying:
            return ReplicationHealth(True, "replaying")
        return ReplicationHealth(True)

    def status(self) -> dict:
        now = self._clock()
        return {
            "mode": self.name,
            "node": self.node,
            "connected": self._down_since is None,
            "replaying": self._replaying,
            "peers": [p.node for p in self.peers.live(now)],
            "last_anti_entropy": self.last_anti_entropy,
            "replay_seconds": self.replay_seconds,
            "lag_ms": None if self.lag_ms is None else round(self.lag_ms, 2),
            **self.counters,
            "gaps": self.peers.total_gaps,  # kept by the tracker: only it knows a real loss
        }

    # ------------------------------------------------------------------ plumbing
    def _decode(self, msg: Msg, expected: str | None) -> m.Message | None:
        try:
            message = m.decode(msg.data)
            if expected is not None and message.type != expected:
                raise m.MessageError(f"expected {expected!r}, got {message.type!r}")
            return message
        except m.MessageError as error:
            self.counters["dropped_messages"] += 1
            if self._drop_logs < DROP_LOGS_PER_PERIOD:
                self._drop_logs += 1
                log.warning("replication message dropped", subject=msg.subject, error=str(error))
            return None

    async def _on_disconnected(self) -> None:
        if self._down_since is None and not self._stopping:
            self._down_since = self._clock()
            log.warning("replication connection lost; serving local state")

    async def _on_reconnected(self) -> None:
        self._down_since = None
        self.peers.forget_sequences()
        log.info("replication connection restored; reconciling")
        self._last_early_round = 0.0
        self._early_round()

    async def _on_error(self, error: Exception) -> None:
        log.debug("replication connection error", error=str(error))
