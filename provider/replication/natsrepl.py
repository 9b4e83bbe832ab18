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
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from provider.logs import redact_url
from provider.store import BUCKETS, Change, KeyValueStore
from provider.store.hlc import wall_ms
from provider.supervisor import Supervisor

from . import exchange
from . import messages as m
from .acks import AckTracker, report_late
from .base import (
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
from .messages import Kind
from .peers import PeerTracker, differing_buckets
from .signing import Trust

log = structlog.get_logger("provider.replication")

#: How long a starting instance waits for any peer to offer a snapshot.
REPLAY_OFFER_TIMEOUT = 1.0
#: How long one snapshot chunk or repair answer may take.
REQUEST_TIMEOUT = 5.0
#: A whole replay may take this long, plus one second per 20,000 offered keys (at most 10
#: minutes): a peer that stalls it cannot hold a new instance in "replaying" for ever.
REPLAY_BASE_DEADLINE_SECS = 30.0
REPLAY_MIN_KEYS_PER_SEC = 20_000
REPLAY_MAX_DEADLINE_SECS = 600.0
#: Let in-flight deltas land before comparing buckets, so they aren't mistaken for loss.
SETTLE_SECS = 0.05
#: At most one early (gap-triggered) anti-entropy round per this many seconds.
EARLY_ROUND_MIN_INTERVAL = 0.5
#: A silently dead (blackholed) link is noticed after two unanswered pings (~6 s); the health
#: grace counts from then.
PING_INTERVAL_SECS = 2.0
#: Event-loop turns a batch that nobody waits for gives the replies of its writes to reach the
#: socket: the daemon's reply task publishes, nats-py's flusher wakes, then it writes.
REPLY_TURNS = 3

CONNECTION_NAME = "wasmCloud KV Cache Provider"


class ReplayStalled(Exception):
    """The peer we replay from stopped making progress; anti-entropy takes over."""


class NatsReplicator:
    """Keeps one store in step with its peers on a plain NATS server."""

    name = "nats"

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
        self.node = store.node_id
        self._clock = clock
        self._pending: list[tuple[Change, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._repairing: set[str] = set()
        self._seq = 0
        self._digest_subject = f"{config.events_subject}.digest"
        self._direct_prefix = f"{config.replay_subject}.node"
        # A lost repair message must not hold up repairs with that peer for several periods.
        self._repair_timeout = min(REQUEST_TIMEOUT, max(1.0, config.heartbeat_secs))
        self.peers = PeerTracker(expiry_secs=peer_expiry_secs(config.heartbeat_secs))
        self.acks = AckTracker()
        self.supervisor = Supervisor(clock=clock)
        self.connection = ConnectionKeeper(
            label="replication",
            url=config.nats_url,
            options=lambda: config.connect_options(
                CONNECTION_NAME, no_echo=True, ping_interval=PING_INTERVAL_SECS
            ),
            clock=clock,
            acks=self.acks,
            supervisor=self.supervisor,
            log=log,
            grace_secs=health_grace_secs(config.heartbeat_secs),
            lost_warning="replication connection lost; serving local state",
            # Nothing can be confirmed while disconnected: answer the waiting writes.
            on_lost=self.acks.release_all,
            on_restored=self._on_reconnected,
            on_error=self._on_error,
        )
        self.load = BulkLoad(log)
        self._last_early_round = 0.0
        self._early_round_pending = False
        #: Peer -> (its raw key, for the ack's pair MAC; the batches to confirm).
        self._acks_due: dict[str, tuple[bytes, list[int]]] = {}
        self.counters = {
            "batches_sent": 0,
            "changes_sent": 0,
            "changes_received": 0,
            "dropped_messages": 0,
            "untrusted_messages": 0,
            "clock_refused": 0,
            "repairs": 0,
            "repair_changes_in": 0,
            "repair_changes_out": 0,
            "repair_bytes": 0,
            "snapshot_keys": 0,
        }
        self.channel = SignedChannel(trust, self.counters, log)
        self.clock_guard = ClockGuard(
            self.node,
            config.max_clock_offset_ms,
            clock=clock,
            counters=self.counters,
            log=log,
            notify=self._send_clock_notice,
        )
        self.last_anti_entropy: float | None = None
        self.lag_ms: float | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.store.track_digests()
        self.store.tombstone_absent_keys = True  # a Del overtaking its value still deletes it
        self.supervisor.spawn("replication", self._run)

    async def stop(self) -> None:
        await self.connection.stop(flush=self._flush_pending)

    async def _run(self) -> None:
        """Connect, subscribe, replay once; rebuild the connection whenever nats-py closes it
        for good (see :mod:`.connection`)."""
        await self.connection.run(self._set_up)

    async def _set_up(self, nc: NATS, first: bool) -> None:
        """Subscribe on a fresh connection; on the first, replay once, then start the loops."""
        log.info("replication connected", url=redact_url(self.config.nats_url), node=self.node)
        await self.channel.attach(nc)
        await nc.subscribe(self.config.events_subject, cb=self._on_batch)
        await nc.subscribe(self._digest_subject, cb=self._on_digest)
        await nc.subscribe(f"{self._direct_prefix}.{self.node}", cb=self._on_direct)
        if first:
            self.supervisor.spawn("replication-flush", self._flush_forever)
            await self._replay()
        await nc.subscribe(
            self.config.replay_subject, queue="kvcache-replay", cb=self._on_snapshot_hello
        )
        if first:
            self.supervisor.spawn("anti-entropy", self._anti_entropy_forever)
        else:
            self._last_early_round = 0.0
            self._early_round()

    # ------------------------------------------------------------------ live deltas
    def publish(self, change: Change) -> asyncio.Future[None] | None:
        """Queue ``change`` for the next batch.

        With ``WRITE_ACK=peers`` and connected peers, returns a future that completes once
        every one of them confirmed the batch, or the ack bound passed (see :mod:`.acks`).
        """
        future = None
        waits = self.config.write_ack == "peers" and self.connection.connected
        if waits and self.acks.targets(self._live_peers()):
            future = asyncio.get_running_loop().create_future()
        self._pending.append((change, future))
        self._wake.set()
        return future

    def _live_peers(self) -> list[str]:
        return [peer.node for peer in self.peers.live(self._clock())]

    def _message_limit(self) -> int:
        """How large a message this connection may carry (its server's ``max_payload``)."""
        nc = self.connection.nc
        return m.message_limit(nc.max_payload if nc is not None else None)

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not any(future is not None for _, future in self._pending):
                # Nobody waits for this batch: its writes' replies go out before we seal it
                # (see REPLY_TURNS), and more changes join it meanwhile.
                for _ in range(REPLY_TURNS):
                    await asyncio.sleep(0)
            await self._flush_pending()

    async def _flush_pending(self) -> None:
        """Publish everything pending as numbered batches."""
        pending, self._pending = self._pending, []
        batch = m.Batch(max_bytes=self._message_limit())
        futures: list[asyncio.Future] = []
        for change, future in pending:
            packed = m.pack_change(change)
            if not batch.fits(packed):
                if batch.count:
                    await self._send_batch(batch, futures)
                    futures = []
                if not batch.fits(packed):
                    log.warning(
                        "change too large to replicate; anti-entropy skips it too",
                        key_bytes=len(change.key),
                        size=len(packed),
                    )
                    if future is not None and not future.done():
                        future.set_result(None)
                    continue
            batch.add(packed)
            if future is not None:
                futures.append(future)
        if batch.count:
            await self._send_batch(batch, futures)

    async def _send_batch(self, batch: m.Batch, futures: list[asyncio.Future]) -> None:
        count = batch.count
        live = self._live_peers()
        wants_acks = self.config.write_ack == "peers" and bool(live)
        targets = self.acks.targets(live) if futures else set()
        self._seq += 1
        seq = self._seq
        message = m.Message(Kind.CHANGES, self.node, seq=seq, sent_ms=wall_ms(), ack=wants_acks)
        body = m.encode(message, batch.take())
        try:
            await self.channel.publish_tagged(self.config.events_subject, body)
        except Exception as error:  # disconnected: anti-entropy repairs after the reconnect
            log.debug("change batch not sent", error=str(error))
            targets = set()
        else:
            self.counters["batches_sent"] += 1
            self.counters["changes_sent"] += count
        self.acks.expect(seq, targets, futures)
        if targets:
            timeout = self.config.write_ack_timeout_ms / 1000
            asyncio.get_running_loop().call_later(timeout, self._ack_deadline, seq)

    def _ack_deadline(self, seq: int) -> None:
        report_late(log, self.acks.expire(seq), self.config.write_ack_timeout_ms)

    async def _on_batch(self, msg: Msg) -> None:
        message = self.channel.open(msg, (Kind.CHANGES,), tag_kinds=m.TAG_KINDS)
        if message is None or message.node == self.node:
            return
        if not self._clock_allows(message.node, message.changes):
            return
        if self.peers.saw_batch(message.node, message.seq, self._clock()):
            self._early_round()
        self.store.apply_many(message.changes, adopt=True)
        self.counters["changes_received"] += len(message.changes)
        if message.ack:
            self._queue_ack(message.node, message.seq, message.signer)
        if message.sent_ms:  # wall clocks of peers differ a little; good enough for a lag gauge
            lag = max(wall_ms() - message.sent_ms, 0)
            self.lag_ms = lag if self.lag_ms is None else 0.9 * self.lag_ms + 0.1 * lag

    def _queue_ack(self, peer: str, seq: int, key: bytes = b"") -> None:
        """Confirm batch ``seq`` to ``peer`` (whose batch ``key`` signed); one ack message per
        peer per event-loop turn, under a pair MAC only that key can check."""
        first = not self._acks_due
        self._acks_due.setdefault(peer, (key, []))[1].append(seq)
        if first:
            self.supervisor.run_once("acks", self._send_acks())

    async def _send_acks(self) -> None:
        await asyncio.sleep(0)  # let the batches of this turn queue their acks too
        due, self._acks_due = self._acks_due, {}
        for peer, (key, seqs) in due.items():
            subject = f"{self._direct_prefix}.{peer}"
            for start in range(0, len(seqs), m.MAX_ACKS):
                ack = m.Message(Kind.ACK, self.node, acks=seqs[start : start + m.MAX_ACKS])
                with contextlib.suppress(Exception):
                    await self.channel.publish_to(subject, m.encode(ack), key)

    # ------------------------------------------------------------------ clock offset
    def _clock_allows(self, peer: str, changes: list[Change]) -> bool:
        """Refuse a message whose stamps run further ahead of our clock than allowed.

        Merging such a stamp would let it win over every write we make until our clock
        catches up (a 120 s fast peer made acknowledged writes vanish). The message is dropped
        whole, counted, shown in health, and the peer is told so it can report itself.
        """
        return self.clock_guard.allows(peer, changes)

    def _send_clock_notice(self, peer: str, notice: bytes) -> None:
        self.supervisor.run_once(
            "clock-notice", self.channel.publish(f"{self._direct_prefix}.{peer}", notice)
        )

    # ------------------------------------------------------------------ anti-entropy
    async def _anti_entropy_forever(self) -> None:
        while True:
            await self._publish_digest()
            self.channel.new_log_period()
            self.acks.forget(self._live_peers())
            await asyncio.sleep(self.config.heartbeat_secs)

    async def _publish_digest(self) -> None:
        digests = self.store.track_digests()
        body = m.encode(m.Message(Kind.DIGEST, self.node, seq=self._seq, digests=digests))
        with contextlib.suppress(Exception):
            await self.channel.publish(self._digest_subject, body)

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
        if self.connection.stopping:
            return
        self._last_early_round = self._clock()
        self.supervisor.run_once("early-digest", self._publish_digest())

    async def _on_digest(self, msg: Msg) -> None:
        message = self.channel.open(msg, (Kind.DIGEST,))
        if message is None or message.node == self.node or self.load.loading:
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
            self.supervisor.run_once("repair", self._repair(peer, differing))
        elif not differing:
            self.last_anti_entropy = time.time()
        if not differing:  # it holds exactly what we hold: whatever it missed, it has now
            self.acks.caught_up(peer)

    async def _repair(self, peer: str, candidates: list[int]) -> None:
        """Reconcile the differing buckets with ``peer``, in bounded messages.

        We send our sub-bucket digests of those buckets; the peer answers with its entries of
        the sub-buckets that differ and names them; we merge those and push ours for the same
        sub-buckets. Both sides then hold the union, and only differing sub-buckets travelled.
        """
        try:
            await asyncio.sleep(SETTLE_SECS)
            self.counters["repairs"] += 1
            subject = f"{self._direct_prefix}.{peer}"
            remaining = list(candidates)
            while remaining:
                buckets = remaining[: m.MAX_REPAIR_BUCKETS]
                request = exchange.repair_request(self.store, self.node, buckets)
                try:
                    reply = await self.channel.request(
                        subject, request, timeout=self._repair_timeout
                    )
                except Exception as error:
                    log.info("repair with peer interrupted", peer=peer, error=str(error))
                    return
                answer = self.channel.open(reply, (Kind.REPAIR_REPLY,))
                if answer is None or answer.node != peer or not answer.buckets:
                    return  # no progress; the next period tries again
                if not self._clock_allows(peer, answer.changes):
                    return
                self.counters["repair_bytes"] += len(request) + len(reply.data)
                self._apply_all(answer.changes, "repair_changes_in")
                await self._push(subject, answer.subs)
                covered = set(answer.buckets)
                remaining = [index for index in remaining if index not in covered]
            self.last_anti_entropy = time.time()
        finally:
            self._repairing.discard(peer)

    async def _push(self, subject: str, subs: list[int]) -> None:
        """Send our entries of the sub-buckets the peer named (no reply expected)."""
        pushes = exchange.repair_pushes(
            self.store, self.node, subs, max_bytes=self._message_limit()
        )
        for body, count in pushes:
            self.counters["repair_changes_out"] += count
            self.counters["repair_bytes"] += len(body)
            with contextlib.suppress(Exception):
                await self.channel.publish(subject, body)

    async def _on_direct(self, msg: Msg) -> None:
        """Messages addressed to this node: repairs, snapshot pulls, acks, clock notices."""
        message = self.channel.open(msg, _DIRECT_KINDS, mac_kinds=m.MAC_KINDS)
        if message is None or message.node == self.node:
            return
        kind = message.type
        if kind == Kind.REPAIR_PUSH:
            if self._clock_allows(message.node, message.changes):
                self._apply_all(message.changes, "repair_changes_in")
        elif kind == Kind.ACK:
            self.acks.acked(message.node, message.acks)
        elif kind == Kind.CLOCK_REFUSED:
            self.clock_guard.refused_by(message.node, message.ahead_ms)
        elif kind == Kind.REPAIR_REQUEST and msg.reply:
            body, count = exchange.repair_reply(
                self.store, self.node, message, max_bytes=self._message_limit()
            )
            self.counters["repair_changes_out"] += count
            self.counters["repair_bytes"] += len(body) + len(msg.data)
            with contextlib.suppress(Exception):
                await self.channel.respond(msg, body)
        elif kind == Kind.SNAPSHOT_PULL and msg.reply:
            body = exchange.snapshot_chunk(
                self.store,
                self.node,
                message.buckets[0],
                message.offset,
                max_bytes=self._message_limit(),
            )
            with contextlib.suppress(Exception):
                await self.channel.respond(msg, body)

    def _apply_all(self, changes: list[Change], counter: str) -> None:
        self.store.apply_many(changes, adopt=True)
        self.counters[counter] += len(changes)

    # ------------------------------------------------------------------ snapshot replay
    async def _on_snapshot_hello(self, msg: Msg) -> None:
        message = self.channel.open(msg, (Kind.SNAPSHOT_HELLO,))
        if message is None or message.node == self.node or not msg.reply:
            return
        offer = m.Message(Kind.SNAPSHOT_OFFER, self.node, keys=len(self.store))
        with contextlib.suppress(Exception):
            await self.channel.respond(msg, m.encode(offer))

    async def _replay(self) -> None:
        """Pull a snapshot from one peer; with nobody answering, start from what we have.

        Bounded in time and in chunks: a peer that stalls or loops is abandoned, and
        anti-entropy brings in whatever the replay did not.
        """
        self.load.begin()  # the cyclic GC pauses until it ends (see .bulkload)
        try:
            hello = m.encode(m.Message(Kind.SNAPSHOT_HELLO, self.node))
            try:
                reply = await self.channel.request(
                    self.config.replay_subject, hello, timeout=REPLAY_OFFER_TIMEOUT
                )
            except (NoRespondersError, NatsTimeoutError):
                log.info("no peer offered a snapshot; starting from local state")
                return
            offer = self.channel.open(reply, (Kind.SNAPSHOT_OFFER,))
            if offer is None:
                return
            log.info("replaying snapshot", peer=offer.node, keys=offer.keys)
            deadline = min(
                REPLAY_BASE_DEADLINE_SECS + offer.keys / REPLAY_MIN_KEYS_PER_SEC,
                REPLAY_MAX_DEADLINE_SECS,
            )
            try:
                await asyncio.wait_for(self._pull_snapshot(offer.node, offer.keys), deadline)
            except TimeoutError:
                raise ReplayStalled(f"replay missed its {deadline:.0f} s deadline") from None
        except ReplayStalled as error:
            log.warning("snapshot replay abandoned; anti-entropy will fill in", reason=str(error))
        except Exception as error:
            log.warning("snapshot replay incomplete; anti-entropy will fill in", error=str(error))
        finally:
            self.load.finish()

    async def _pull_snapshot(self, peer: str, expected: int) -> None:
        """Pull and merge the peer's snapshot chunk by chunk, one request ahead.

        The next chunk is requested before this one is merged, so the peer builds, signs and
        sends it while we merge: on two cores both sides work at once instead of taking turns.
        """
        bucket, offset, merged = 0, 0, 0
        subject = f"{self._direct_prefix}.{peer}"
        # Every chunk but the last carries at least one key, and keys written meanwhile may
        # add some: more chunks than this means the peer is not making progress.
        max_chunks = 2 * expected + BUCKETS + 64
        pending = asyncio.ensure_future(self._request_chunk(subject, bucket, offset))
        try:
            for pulled in range(1, max_chunks + 1):
                if self.connection.stopping:  # a stop racing a reply must still end the replay
                    raise asyncio.CancelledError
                reply = await pending
                chunk = self.channel.open(reply, (Kind.SNAPSHOT_CHUNK,))
                if chunk is None or chunk.node != peer:
                    raise ReplayStalled("the peer sent an invalid snapshot chunk")
                if not self._clock_allows(peer, chunk.changes):
                    raise ReplayStalled("the peer's snapshot carries stamps from the future")
                # Where the next chunk starts, if this one moved the cursor forward.
                advanced: tuple[int, int] | None = None
                if not chunk.end and chunk.changes:
                    cursor = (chunk.buckets[0], chunk.offset)
                    advanced = cursor if cursor > (bucket, offset) else None
                if advanced is not None and pulled < max_chunks and not self.connection.stopping:
                    pending = asyncio.ensure_future(self._request_chunk(subject, *advanced))
                    # Two loop turns: one signs and queues the pull, one lets nats-py's flusher
                    # write it. Without them it would leave only after the merge below.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                self.store.apply_many(chunk.changes, adopt=True)
                merged += len(chunk.changes)
                self.counters["snapshot_keys"] = merged
                self.load.progress(merged, max(expected - merged, 0))
                if chunk.end:
                    elapsed = self.load.elapsed()
                    log.info("replay complete", keys=merged, seconds=round(elapsed, 3))
                    return
                if advanced is None:
                    raise ReplayStalled("the snapshot cursor did not advance")
                bucket, offset = advanced
            raise ReplayStalled(f"more chunks than an offer of {expected} keys needs")
        finally:
            _drop_pending(pending)

    async def _request_chunk(self, subject: str, bucket: int, offset: int) -> Msg:
        pull = m.encode(m.Message(Kind.SNAPSHOT_PULL, self.node, buckets=[bucket], offset=offset))
        return await self.channel.request(subject, pull, timeout=REQUEST_TIMEOUT)

    # ------------------------------------------------------------------ health & status
    def health(self) -> ReplicationHealth:
        down_for = self.connection.outage()
        if down_for is not None:
            return ReplicationHealth(
                False,
                f"replication to {redact_url(self.config.nats_url)} down for {down_for:.0f}s; "
                "serving local state, which may be stale",
            )
        refused = self.clock_guard.problem()
        if refused:
            return ReplicationHealth(False, refused)
        crashed = self.supervisor.problem()
        if crashed:
            return ReplicationHealth(False, crashed)
        return running_health(self.load.loading, self.clock_guard, self.acks)

    def status(self) -> dict[str, object]:
        return {
            "mode": self.name,
            "node": self.node,
            **peer_status(
                connected=self.connection.connected,
                replaying=self.load.loading,
                write_ack=self.config.write_ack,
                peers=self._live_peers(),
                clock_guard=self.clock_guard,
                acks=self.acks,
            ),
            "last_anti_entropy": self.last_anti_entropy,
            "replay_seconds": self.load.seconds,
            "lag_ms": None if self.lag_ms is None else round(self.lag_ms, 2),
            **self.counters,
            "gaps": self.peers.total_gaps,  # kept by the tracker: only it knows a real loss
        }

    # ------------------------------------------------------------------ plumbing
    def _on_reconnected(self) -> None:
        self.peers.forget_sequences()
        log.info("replication connection restored; reconciling")
        self._last_early_round = 0.0
        self._early_round()

    async def _on_error(self, error: Exception) -> None:
        log.debug("replication connection error", error=str(error))


_DIRECT_KINDS = (
    Kind.REPAIR_PUSH,
    Kind.REPAIR_REQUEST,
    Kind.SNAPSHOT_PULL,
    Kind.ACK,
    Kind.CLOCK_REFUSED,
)


def _drop_pending(request: asyncio.Future[Msg]) -> None:
    """Abandon a request sent ahead that the replay no longer needs, without asyncio warning
    that its error (a timeout, say) was never retrieved."""
    if not request.done():
        request.cancel()
    elif not request.cancelled():
        request.exception()
