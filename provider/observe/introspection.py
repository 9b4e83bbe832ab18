"""What an instance says about itself: a status document, served the NATS-native way.

Each instance registers a NATS micro service named ``nats-kvcache`` (nats-py's ``nats.micro``),
so ``nats micro ls`` / ``nats micro stats nats-kvcache`` list every instance in a lattice, and
``$SRV.STATS.nats-kvcache`` returns the full status of each in its endpoint's ``data``. The
``status`` endpoint answers the same document directly. ``nats-kvcache status`` and the dev
lattice's table read it; :mod:`provider.observe.prometheus` exports the same numbers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from provider import __version__
from provider.observe.status import (
    InstanceStatus,
    MemoryStatus,
    OperationStats,
    ReplicationStatus,
    VerifierStatus,
)
from provider.replication.config import subject_token

if TYPE_CHECKING:  # the daemon imports this module
    from provider.daemon import ProviderDaemon

SERVICE_NAME = "nats-kvcache"
VERSION = __version__
STATS_SUBJECT = f"$SRV.STATS.{SERVICE_NAME}"


def status_subject(lattice: str, link_name: str, instance: str) -> str:
    return f"kvcache.status.{subject_token(lattice)}.{subject_token(link_name)}.{instance}"


async def start_service(
    nc: NATS,
    status: Callable[[], InstanceStatus],
    *,
    lattice: str,
    provider_key: str,
    link_name: str,
    instance: str,
) -> Service:
    """Register this instance's micro service; returns it (call ``stop()`` at shutdown)."""
    service = await add_service(
        nc,
        name=SERVICE_NAME,
        version=VERSION,
        description="wasmcloud:keyvalue provider (replicated in-memory cache)",
        metadata={
            "lattice": lattice,
            "provider_key": provider_key,
            "link_name": link_name,
            "instance": instance,
        },
        stats_handler=lambda _endpoint: status().to_dict(),
    )

    async def answer(request: Request) -> None:
        await request.respond(json.dumps(status().to_dict()).encode())

    await service.add_endpoint(
        name="status",
        subject=status_subject(lattice, link_name, instance),
        handler=answer,
    )
    return service


def instance_status(daemon: ProviderDaemon) -> InstanceStatus:
    """The status document of one running :class:`provider.daemon.ProviderDaemon`."""
    health = daemon.health()
    hd = daemon.host_data
    store = daemon.store
    return InstanceStatus(
        instance=daemon.instance,
        node=store.node_id,
        lattice=hd.lattice_rpc_prefix,
        provider_key=hd.provider_key,
        link_name=hd.link_name,
        healthy=health.healthy,
        message=health.message,
        uptime_secs=round(time.monotonic() - daemon.started_at, 1),
        entries=len(store),
        memory=MemoryStatus(store.used_memory, store.max_memory, store.oom_refusals),
        links=len(daemon.links),
        replication=ReplicationStatus.from_dict(daemon.replicator.status()),
        operations={
            name: OperationStats.from_dict(numbers)
            for name, numbers in daemon.metrics.snapshot().items()
        },
        verifier=VerifierStatus(
            batches_offloaded=daemon.verifier.batches_offloaded,
            verified_inline=daemon.verifier.verified_inline,
        ),
    )
