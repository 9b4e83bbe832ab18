"""The process shell: NATS subscriptions and lifecycle (protocol spec §3.1, §4, §8-§10).

Deliberately thin. It connects, wires subjects to the handlers, and runs until a shutdown
request addressed to its host arrives. Everything with logic in it lives elsewhere:
:mod:`provider.rpc.invocations` (the RPC path), :mod:`provider.store` (the data),
:mod:`provider.replication` (keeping peers in step).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Sequence

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.service import Service

from contract.wire import (
    RPC_QUEUE_GROUP,
    SHUTDOWN_ACK,
    HealthCheckResponse,
    HostData,
    LinkDefinition,
    Subjects,
    parse_shutdown_host_id,
)
from provider import memory
from provider.logs import redact_url
from provider.natsconn import connect_options
from provider.observe.introspection import instance_status, start_service
from provider.observe.metrics import Metrics
from provider.observe.prometheus import start_from_environment as start_metrics_endpoint
from provider.observe.status import InstanceStatus
from provider.replication import Disabled, Replicator, Standalone
from provider.replication.config import (
    REPLICATION_KEYS,
    ReplicationConfig,
    normalize,
    parse_config_json,
)
from provider.replication.factory import build_replicator
from provider.replication.signing import Trust, TrustError
from provider.rpc.chunking import ChunkStore
from provider.rpc.invocations import InvocationHandler
from provider.rpc.links import LinkRegistry
from provider.rpc.verifier import SignatureVerifier
from provider.store import BUCKETS, Change, KeyValueStore
from provider.store.codec import new_node_id
from provider.supervisor import Supervisor

log = structlog.get_logger("provider.daemon")

#: A stop (signal or shutdown request) finishes its clean-up within this many seconds: the host
#: waits 2 s for the shutdown acknowledgement, and every step of the clean-up has a bound.
STOP_CLEANUP_SECONDS = 1.2
#: Closing the lattice connection after the clean-up, at most.
CLOSE_SECONDS = 0.4
#: Past this many seconds after a stop was asked for, the process exits with status 0 whatever
#: is still running (a last resort: the bounded steps above normally finish long before).
STOP_DEADLINE_SECONDS = 1.8

#: How long one pass over all keys takes (expired keys become tombstones, old tombstones are
#: forgotten). Reads check deadlines themselves, so this only bounds memory, never correctness.
SWEEP_INTERVAL_SECONDS = 30.0


class ProviderDaemon:
    """One provider instance, from HostData to exit code."""

    def __init__(self, host_data: HostData) -> None:
        self.host_data = host_data
        self.instance = host_data.instance_id or str(uuid.uuid4())
        self.subjects = Subjects(
            host_data.lattice_rpc_prefix, host_data.provider_key, host_data.link_name
        )
        self.links = LinkRegistry()
        self.metrics = Metrics()
        self.store = KeyValueStore(node_id=new_node_id())
        self.supervisor = Supervisor()
        self.replicator: Replicator = Standalone()
        self._stopped = asyncio.Event()
        self.started_at = time.monotonic()
        self._service: Service | None = None
        self._nc: NATS | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._starting: asyncio.Task[None] | None = None  # start-up, cancelled by an early stop
        self._stop_task: asyncio.Task[None] | None = None  # the one stop, however it was asked for
        self._acks: list[str] = []  # reply subjects of shutdown requests to acknowledge
        self._handler: InvocationHandler | None = None
        self._rpc_sub: Subscription | None = None
        self.verifier = SignatureVerifier()
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_ready = asyncio.Event()
        self._replication: ReplicationConfig | None = None
        self._warned_link_config = False
        self._config_values = parse_config_json(host_data.config_json)
        self.store.max_memory = memory.system_default_limit()
        self._memory_source: str | None = None  # who set MAX_MEMORY: config_json or a link

    # ------------------------------------------------------------------ lifecycle
    async def run(self, early_signals: Sequence[int] = ()) -> int:
        """Serve until a shutdown request or SIGTERM/SIGINT, then return 0.

        The signal handlers go in first, so a stop during start-up is not lost: it cancels the
        start-up. ``early_signals`` are signals :mod:`provider.main` caught before the loop ran.
        A start-up failure (no stop asked for) is raised: fatal, exit status 1.
        """
        self._loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):  # `docker stop`, Ctrl-C: clean exit 0
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        self._starting = starting = asyncio.create_task(self._start(), name="start-up")
        for caught in early_signals[:1]:
            self._on_signal(caught)
        await asyncio.wait({starting})
        error = None if starting.cancelled() else starting.exception()
        if error is not None and self._stop_task is None:
            raise error
        await self._stopped.wait()
        nc = self._nc
        if nc is not None and not nc.is_closed:
            await _bounded(nc.close(), CLOSE_SECONDS, "close lattice connection")
        return 0

    async def _start(self) -> None:
        """Connect, wire the subjects to the handlers and start the background work."""
        hd = self.host_data
        log.info(
            f"Starting capability provider {hd.provider_key} instance {self.instance} "
            f"with nats url {redact_url(hd.nats_url)}"
        )
        self._nc = nc = NATS()  # known before connecting, so a stop can close it
        await nc.connect(
            **connect_options(
                hd.nats_url, f"nats-kvcache {hd.provider_key}", jwt_and_seed=hd.credentials()
            ),
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
        )
        await self.verifier.start()
        self._handler = InvocationHandler(
            hd,
            self.links,
            self.store,
            self._publish_change,
            ChunkStore(nc, hd.lattice_rpc_prefix),
            self.metrics,
            self.verifier,
            send_reply=self._queue_reply,
        )
        self._tasks.append(asyncio.create_task(self._publish_replies_forever()))
        if "MAX_MEMORY" in self._config_values:  # config_json wins over any link's MAX_MEMORY
            self._configure_memory(self._config_values, "config_json")
        if "NATS_URL" in self._config_values:  # start-up config wins over any link's values
            self._configure_replication(self._config_values, "config_json")
        for link in hd.link_definitions:
            self._add_link(link, at_start=True)

        s = self.subjects
        self._rpc_sub = await nc.subscribe(s.rpc, queue=RPC_QUEUE_GROUP, cb=self._on_rpc)
        await nc.subscribe(s.link_put, cb=self._on_link_put)
        await nc.subscribe(s.link_del, cb=self._on_link_del)
        await nc.subscribe(s.shutdown, cb=self._on_shutdown)
        self._service = await start_service(
            nc,
            self.status,
            lattice=hd.lattice_rpc_prefix,
            provider_key=hd.provider_key,
            link_name=hd.link_name,
            instance=self.instance,
        )
        start_metrics_endpoint(self._status_from_another_thread)
        await nc.subscribe(s.health, cb=self._on_health)  # last: healthy implies subscribed
        # Twice: nats-py writes flush()'s PING ahead of commands its flusher task has not yet
        # written, so only the second PONG proves the server has every SUB above.
        await nc.flush(timeout=5)
        await nc.flush(timeout=5)
        self.supervisor.spawn("sweep", self._sweep_forever)
        log.info("provider ready", subjects=s.rpc, links=len(self.links))

    def _on_signal(self, signum: int) -> None:
        # The provider archive's bootloader forwards the signal that the process group also
        # got, so the same stop can arrive twice: log (and act on) the first one only.
        if self._stop_task is not None:
            log.debug("signal received again", signal=signal.Signals(signum).name)
            return
        log.info("signal received; shutting down", signal=signal.Signals(signum).name)
        self._begin_stop()

    def _begin_stop(self) -> None:
        """Start the one stop (kept apart from _tasks, which _shutdown cancels)."""
        if self._stop_task is not None:
            return
        watchdog = threading.Timer(STOP_DEADLINE_SECONDS, _exit_now)
        watchdog.daemon = True
        watchdog.start()
        self._stop_task = asyncio.create_task(self._stop(), name="stop")

    async def _stop(self) -> None:
        """Cancel a start-up still running, clean up, acknowledge shutdown requests, flush."""
        deadline = self._loop.time() + STOP_CLEANUP_SECONDS
        starting = self._starting
        if starting is not None and not starting.done():
            starting.cancel()
            await asyncio.wait({starting}, timeout=self._left(deadline, 0.3))
        try:
            await self._shutdown(deadline)
        except Exception:  # the clean-up is best effort; the exit must still happen
            log.exception("clean-up failed")
        nc = self._nc
        if nc is not None and nc.is_connected:
            for reply in self._acks:
                with contextlib.suppress(Exception):
                    await nc.publish(reply, SHUTDOWN_ACK)
            flush = self._left(deadline, 0.3)
            # nats-py annotates flush's timeout as an int; it is a float for asyncio.wait_for.
            await _bounded(nc.flush(timeout=flush), flush + 0.05, "flush")  # type: ignore[arg-type]
        self._stopped.set()

    def _left(self, deadline: float, cap: float) -> float:
        """Seconds one clean-up step may take: at most ``cap``, within the deadline."""
        return max(0.01, min(cap, deadline - self._loop.time()))

    async def _shutdown(self, deadline: float | None = None) -> None:
        """Stop taking calls, answer those in flight, stop everything else; each step bounded."""
        if deadline is None:
            deadline = self._loop.time() + STOP_CLEANUP_SECONDS
        left = self._left
        if self._rpc_sub is not None and self._nc is not None and self._nc.is_connected:
            await _bounded(self._rpc_sub.unsubscribe(), left(deadline, 0.2), "unsubscribe")
        await _bounded(self.verifier.stop(), left(deadline, 0.3), "stop verifier")
        if self._handler is not None:  # calls waiting for I/O get a moment to finish
            await self._handler.drain(left(deadline, 0.4))
        await self._publish_replies()  # calls already answered go out before we stop
        for task in self._tasks:
            task.cancel()
        await self.supervisor.stop(timeout=left(deadline, 0.5))
        if self._service is not None:
            await _bounded(self._service.stop(), left(deadline, 0.3), "stop service")
        await _bounded(self.replicator.stop(), left(deadline, 0.6), "stop replication")

    # ------------------------------------------------------------------ RPC
    async def _on_rpc(self, msg: Msg) -> None:
        # Never awaits: nats-py hands us the next message at once, so calls pipeline.
        assert self._handler is not None  # made before the RPC subject is subscribed
        self._handler.receive(msg.data, msg.reply)

    def _queue_reply(self, subject: str, body: bytes) -> None:
        if not subject:  # the spec: answer only requests that carry a reply subject
            return
        if not self._outbox:
            self._outbox_ready.set()
        self._outbox.append((subject, body))

    async def _publish_replies_forever(self) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            await self._publish_replies()

    async def _publish_replies(self) -> None:
        outbox, self._outbox = self._outbox, []
        if self._nc is None:
            return
        publish = self._nc.publish
        for subject, body in outbox:
            try:
                await publish(subject, body)
            except Exception as error:  # the host times out that call; the rest go on
                log.warning("reply not sent", error=str(error))

    def _publish_change(self, change: Change) -> Awaitable[None] | None:
        return self.replicator.publish(change)

    # ------------------------------------------------------------------ links
    def _decode_link(self, data: bytes) -> LinkDefinition:
        if self.host_data.is_test_mode:
            return LinkDefinition.decode_json(data)
        return LinkDefinition.decode_msgpack(data)

    def _add_link(self, link: LinkDefinition, *, at_start: bool = False) -> None:
        if link.actor_id in self.links:
            log.debug("duplicate link ignored", actor=link.actor_id)
            return
        try:
            accepted = self.on_link(link)
        except Exception:
            log.exception("link hook failed; link not recorded", actor=link.actor_id)
            return
        if accepted or at_start:  # the SDK records start-up links even when refused
            self.links.add(link)
            log.info("actor linked", actor=link.actor_id, contract=link.contract_id)
        else:
            log.warning("link refused", actor=link.actor_id)

    def on_link(self, link: LinkDefinition) -> bool:
        """The provider's link hook: the first link decides how this instance replicates."""
        values = normalize(link.values)
        if "MAX_MEMORY" in values and self._memory_source is None:
            self._configure_memory(values, f"link {link.actor_id}")
        if self._replication is None:
            self._configure_replication({**values, **self._config_values}, f"link {link.actor_id}")
        elif any(key in values for key in REPLICATION_KEYS) and not self._warned_link_config:
            later = self._replication_config_from(values)
            if later.fingerprint() != self._replication.fingerprint():
                self._warned_link_config = True
                log.warning(
                    "a later link asks for different replication settings; only the first "
                    "link's settings apply until restart",
                    actor=link.actor_id,
                )
        return True

    def _configure_memory(self, values: dict[str, str], source: str) -> None:
        """``MAX_MEMORY``, once: from config_json, else from the first link that sets it."""
        self._memory_source = source
        limit, problems = memory.limit_from_values(values, self.store.max_memory)
        for problem in problems:
            log.warning("memory setting rejected", problem=problem, source=source)
        self.store.max_memory = limit
        log.info("memory limit", max_memory=limit, source=source)

    def _replication_config_from(self, values: dict[str, str]) -> ReplicationConfig:
        hd = self.host_data
        return ReplicationConfig.from_values(
            values, lattice_prefix=hd.lattice_rpc_prefix, link_name=hd.link_name
        )

    def _configure_replication(self, values: dict[str, str], source: str) -> None:
        """Decide, once, whether and how this instance replicates; start it in the background."""
        config = self._replication_config_from(values)
        self._replication = config
        for problem in config.problems:
            log.warning("replication setting rejected", problem=problem, source=source)
        if not config.enabled:
            log.info("standalone: no NATS_URL configured", source=source)
            return
        try:
            trust = Trust.from_host(self.host_data.invocation_seed, self.host_data.cluster_issuers)
        except TrustError as error:
            log.error("replication cannot start; serving local state only", error=str(error))
            self.replicator = Disabled(f"replication disabled: {error}")
            return
        if not trust.signs_as_trusted:
            log.warning(
                "this host's invocation_seed is not among cluster_issuers: peers of this lattice "
                "will refuse our replication messages"
            )
        self.replicator = build_replicator(self.store, config, trust)
        log.info(
            "replication configured",
            source=source,
            mode=config.mode,
            url=redact_url(config.nats_url),
            events=config.events_subject,
            replay=config.replay_subject,
            heartbeat_secs=config.heartbeat_secs,
        )
        self._tasks.append(asyncio.create_task(self.replicator.start()))

    async def _on_link_put(self, msg: Msg) -> None:
        try:
            link = self._decode_link(msg.data)
        except Exception as error:
            log.warning("undecodable link definition dropped", error=str(error))
            return
        self._add_link(link)

    async def _on_link_del(self, msg: Msg) -> None:
        try:
            link = self._decode_link(msg.data)
        except Exception as error:
            log.warning("undecodable link deletion dropped", error=str(error))
            return
        if self.links.remove(link.actor_id) is not None:
            log.info("actor unlinked", actor=link.actor_id)

    # ------------------------------------------------------------------ health & shutdown
    def status(self) -> InstanceStatus:
        """This instance's status document (introspection endpoint, metrics, CLI)."""
        return instance_status(self)

    def _status_from_another_thread(self) -> InstanceStatus:
        """The status document, built on the event loop: the metrics server has its own thread,
        and the state the document reads is only ever touched from the loop."""

        async def build() -> InstanceStatus:
            return self.status()

        return asyncio.run_coroutine_threadsafe(build(), self._loop).result(timeout=5)

    def health(self) -> HealthCheckResponse:
        state = self.replicator.health()
        crashed = self.supervisor.problem()
        if crashed:
            return HealthCheckResponse(False, crashed)
        note = memory.health_note(self.store.used_memory, self.store.max_memory)
        if note:  # near or over MAX_MEMORY: reads and deletes still work, so still healthy
            message = f"{state.message}; {note}" if state.message else note
            return HealthCheckResponse(state.healthy, message)
        return HealthCheckResponse(state.healthy, state.message)

    async def _on_health(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            response = self.health()
        except Exception as error:
            response = HealthCheckResponse(False, str(error))
        body = response.encode_json() if self.host_data.is_test_mode else response.encode_msgpack()
        assert self._nc is not None  # the health subject is subscribed on this connection
        await self._nc.publish(msg.reply, body)

    async def _on_shutdown(self, msg: Msg) -> None:
        if not msg.reply:
            return
        host_id = parse_shutdown_host_id(msg.data)
        if host_id and host_id != self.host_data.host_id:
            log.debug("shutdown for another host ignored")
            return
        log.info("shutdown requested")
        # The stop runs in its own task and acknowledges once the clean-up is done (the host
        # kills the process right after the ack); closing happens in run(): draining from
        # inside a subscription callback would wait for this very callback to return.
        self._acks.append(msg.reply)
        self._begin_stop()

    # ------------------------------------------------------------------ background
    async def _sweep_forever(self) -> None:
        """Sweep a slice of the buckets every second: a full pass per SWEEP_INTERVAL_SECONDS,
        without ever scanning a million keys in one go on the event loop."""
        per_tick = -(-BUCKETS // int(SWEEP_INTERVAL_SECONDS))
        start = 0
        while True:
            await asyncio.sleep(1.0)
            self.store.sweep(range(start, min(start + per_tick, BUCKETS)))
            start = 0 if start + per_tick >= BUCKETS else start + per_tick

    async def _on_nats_error(self, error: Exception) -> None:
        log.warning("lattice connection error", error=str(error))

    async def _on_disconnected(self) -> None:
        if not self._stopped.is_set():
            log.warning("lattice connection lost; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("lattice connection restored")


async def _bounded(awaitable: Awaitable[object], timeout: float, step: str) -> None:
    """Await ``awaitable`` for at most ``timeout`` seconds; failures are logged, never raised.

    It runs as its own task, and an overrun is cancelled *without* waiting for the cancellation
    to be honoured: code that swallows a CancelledError (Python 3.11's ``asyncio.wait_for`` can
    lose one when the awaited reply arrives at the same moment) cannot hold up a stop.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=max(timeout, 0.01))
    if not done:
        task.cancel()
        log.warning("stop step overran; abandoned", step=step, seconds=round(timeout, 2))
    elif not task.cancelled() and task.exception() is not None:
        log.debug("stop step failed", step=step, error=str(task.exception()))


def _exit_now() -> None:
    """The stop deadline passed (timer thread): exit with status 0 at once."""
    log.warning("stop not finished in time; exiting now", seconds=STOP_DEADLINE_SECONDS)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
        sys.stdout.flush()
    os._exit(0)
