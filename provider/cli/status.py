"""``nats-kvcache status``: every running instance's status, from its introspection endpoint.

Instances answer ``$SRV.STATS.nats-kvcache`` (the NATS micro-services convention, so ``nats micro
stats nats-kvcache`` shows the same), each with its status document in the ``status`` endpoint's
``data``. We send one request, collect every reply for a short window, and print a table (or the
raw documents with ``--json``). Connection settings come from flags or the dev lattice state file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from contract.hostdata import DEFAULT_NATS_URL, normalize_nats_url
from provider.cli import state as statefile
from provider.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Unreachable,
    connect,
    error,
)
from provider.observe.introspection import STATS_SUBJECT
from provider.observe.status import InstanceStatus

EXIT_NONE = EXIT_FAILED


async def collect_statuses(nc: Any, *, window: float = 0.5) -> list[dict[str, Any]]:
    """Status documents of all instances that answer within ``window`` seconds."""
    inbox = nc.new_inbox()
    replies: list[dict[str, Any]] = []

    async def on_reply(msg: Any) -> None:
        try:
            stats = json.loads(msg.data)
            for endpoint in stats.get("endpoints") or []:
                if endpoint.get("name") == "status" and isinstance(endpoint.get("data"), dict):
                    replies.append(endpoint["data"])
        except (ValueError, AttributeError):
            return

    subscription = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(STATS_SUBJECT, b"", reply=inbox)
    await nc.flush()
    await asyncio.sleep(window)
    await subscription.unsubscribe()
    return sorted(replies, key=lambda s: (s.get("lattice", ""), s.get("instance", "")))


def _ago(timestamp: Any) -> str:
    if not isinstance(timestamp, int | float):
        return "-"
    return f"{max(time.time() - timestamp, 0):.0f}s ago"


def render_table(statuses: list[InstanceStatus]) -> str:
    header = (
        f"{'instance':<10}{'health':<12}{'entries':>9}  {'mode':<10}{'peers':>5}  "
        f"{'last repair check':<18}{'calls':>8}{'errors':>7}  {'p99 ms':>7}{'lag ms':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in statuses:
        repl = s.replication
        health = "healthy" if s.healthy else "UNHEALTHY"
        if s.message:
            health += "*"
        lag = "-" if repl.lag_ms is None else repl.lag_ms
        lines.append(
            f"{s.instance[:8]:<10}{health:<12}{s.entries:>9}  "
            f"{repl.mode:<10}{len(repl.peers):>5}  "
            f"{_ago(repl.last_anti_entropy):<18}{s.calls:>8}{s.errors:>7}  "
            f"{s.worst_p99_ms:>7}{lag:>8}"
        )
    notes = [f"  * {s.instance[:8]}: {s.message}" for s in statuses if s.message]
    return "\n".join(lines + notes)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="show every running instance (health, keys, replication, latency)"
    )
    parser.add_argument("--nats-url", help="lattice NATS URL (default: from the state file)")
    parser.add_argument("--lattice", help="only instances of this lattice prefix")
    parser.add_argument("--provider-key", help="only instances of this provider key")
    parser.add_argument("--window", type=float, default=0.5, help="seconds to collect replies")
    parser.add_argument("--json", action="store_true", help="print the raw status documents")
    parser.add_argument(
        "--state",
        help=f"dev lattice state file (default ${statefile.STATE_ENV}, else the nearest "
        f"{statefile.DEFAULT_STATE_PATH} in this or a parent directory)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    location = statefile.locate(args.state)
    try:
        saved = statefile.read(location)
    except statefile.StateError as failure:
        error("status", failure)
        return EXIT_USAGE
    if args.window <= 0:
        error("status", "--window must be > 0")
        return EXIT_USAGE
    url = normalize_nats_url(args.nats_url or saved.nats_url or DEFAULT_NATS_URL)
    hint = "pass --nats-url" if saved.nats_url else "start `nats-kvcache dev` or pass --nats-url"
    try:
        nc = await connect(url, name="nats-kvcache status", timeout=2.0, connect_hint=hint)
    except Unreachable as failure:
        error("status", failure)
        return EXIT_UNREACHABLE
    try:
        statuses = await collect_statuses(nc, window=args.window)
    finally:
        await nc.close()
    statuses = [
        doc
        for doc in statuses
        if (not args.lattice or doc.get("lattice") == args.lattice)
        and (not args.provider_key or doc.get("provider_key") == args.provider_key)
    ]
    if args.json:  # the documents exactly as the instances sent them
        print(json.dumps(statuses, indent=2))
    elif statuses:
        print(render_table([InstanceStatus.from_dict(doc) for doc in statuses]))
    else:
        print("no nats-kvcache instance answered")
    return EXIT_OK if statuses else EXIT_NONE
