"""The process shell: NATS subscriptions and lifecycle (protocol spec §3.1, §4, §8-§10).

Deliberately thin. It connects, wires subjects to the handlers, and runs until a shutdown
request addressed to its host arrives. Everything with logic in it lives elsewhere:
:mod:`provider.invocations` (the RPC path), :mod:`provider.store` (the data),
:mod:`provider.replication` (keeping peers in step).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Awaitable

import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.wire import (
    RPC_QUEUE_GROUP,
    SHUTDOWN_ACK,
    HealthCheckResponse,
    HostData,
    LinkDefinition,
    Subjects,
    parse_shutdown_host_id,
)
from provider.chunking import ChunkStore
from provider.introspection import instance_status, start_service
from provider.invocations import InvocationHandler
from provider.links import LinkRegistry
from provider.logs import redact_url
from provider.metrics import Metrics
from provider.natsconn import connect_options
from provider.prometheus import start_from_environment as start_metrics_endpoint
from provider.replication import Replicator, Standalone
from provider.replication.config import (
    REPLICATION_KEYS,
    ReplicationConfig,
    normalize,
    parse_config_json,
)
from provider.replication.factory import build_replicator
from provider.store import BUCKETS, Change, KeyValueStore
from provider.verifier import SignatureVerifier

log = structlog.get_logger("provider.daemon")

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
        self.store = KeyValueStore(node_id=uuid.uuid4().hex[:16])
        self.replicator: Replicator = Standalone()
        self._stopped = asyncio.Event()
        self.started_at = time.monotonic()
        self._service = None
        self._nc: NATS | None = None
        self._tasks: list[asyncio.Task] = []
        self._signal_task: asyncio.Task | None = None
        self.verifier = SignatureVerifier()
        self._outbox: list[tuple[str, bytes]] = []
        self._outbox_ready = asyncio.Event()
        self._replication: ReplicationConfig | None = None
        self._warned_link_config = False
        self._config_values = parse_config_json(host_data.config_json)

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        hd = self.host_data
        self._loop = asyncio.get_running_loop()
        log.info(
            f"Starting capability provider {hd.provider_key} instance {self.instance} "
            f"with nats url {redact_url(hd.nats_url)}"
        )
        self._nc = nc = await nats.connect(
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
        if "NATS_URL" in self._config_values:  # start-up config wins over any link's values
            self._configure_replication(self._config_values, "config_json")
        for link in hd.link_definitions:
            self._add_link(link, at_start=True)

        s = self.subjects
        await nc.subscribe(s.rpc, queue=RPC_QUEUE_GROUP, cb=self._on_rpc)
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
        await nc.flush()
        self._tasks.append(asyncio.create_task(self._sweep_forever()))
        for signum in (signal.SIGTERM, signal.SIGINT):  # `docker stop`, Ctrl-C: clean exit 0
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.add_signal_handler(signum, self._on_signal, signum)
        log.info("provider ready", subjects=s.rpc, links=len(self.links))
        await self._stopped.wait()
        await asyncio.wait_for(nc.close(), timeout=2)
        return 0

    def _on_signal(self, signum: int) -> None:
        # The provider archive's bootloader forwards the signal that the process group also
        # got, so the same stop can arrive twice: log (and act on) the first one only.
        if self._signal_task is not None:
            log.debug("signal received again", signal=signal.Signals(signum).name)
            return
        log.info("signal received; shutting down", signal=signal.Signals(signum).name)
        # Kept apart from _tasks, which _shutdown cancels.
        self._signal_task = asyncio.create_task(self._stop_after_cleanup())

    async def _stop_after_cleanup(self) -> None:
        await self._shutdown()
        await self._nc.flush(timeout=1)
        self._stopped.set()

    async def _shutdown(self) -> None:
        await self._publish_replies()  # calls already answered go out before we stop
        for task in self._tasks:
            task.cancel()
        if self._service is not None:
            with contextlib.suppress(Exception):
                await self._service.stop()
        await self.replicator.stop()
        await self.verifier.stop()

    # ------------------------------------------------------------------ RPC
    async def _on_rpc(self, msg: Msg) -> None:
        # Never awaits: nats-py hands us the next message at once, so calls pipeline.
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
        self.replicator = build_replicator(self.store, config)
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
    def status(self) -> dict:
        """This instance's status document (introspection endpoint, metrics, CLI)."""
        return instance_status(self)

    def _status_from_another_thread(self) -> dict:
        """The status document, built on the event loop: the metrics server has its own thread,
        and the state the document reads is only ever touched from the loop."""

        async def build() -> dict:
            return self.status()

        return asyncio.run_coroutine_threadsafe(build(), self._loop).result(timeout=5)

    def health(self) -> HealthCheckResponse:
        state = self.replicator.health()
        return HealthCheckResponse(state.healthy, state.message)

    async def _on_health(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            response = self.health()
        except Exception as error:
            response = HealthCheckResponse(False, str(error))
        body = response.encode_json() if self.host_data.is_test_mode else response.encode_msgpack()
        await self._nc.publish(msg.reply, body)

    async def _on_shutdown(self, msg: Msg) -> None:
        if not msg.reply:
            return
        host_id = parse_shutdown_host_id(msg.data)
        if host_id and host_id != self.host_data.host_id:
            log.debug("shutdown for another host ignored")
            return
        log.info("shutdown requested")
        await self._shutdown()
        nc = self._nc
        await nc.publish(msg.reply, SHUTDOWN_ACK)
        await nc.flush(timeout=1)
        # Closing happens in run(): draining from inside a subscription callback would wait
        # for this very callback to return.
        self._stopped.set()

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
