"""The baseline processes: what bare nats-py does on this machine, in a process of its own.

Every figure the benchmarks report comes with a baseline measured in the same run, by the same
driver. These are the two that stand in for the provider, each started by the orchestrator
(``orchestra.start_echo`` / ``start_sink``) and printing ``ready`` once subscribed:

* ``python bench/baselines.py echo --url U --subject S``: a responder in the provider's RPC
  queue group that answers with the request bytes (the ceiling of request/reply);
* ``python bench/baselines.py sink --url U --subject S --count N --done D``: a subscriber that
  counts messages and publishes on ``D`` after every ``N`` (the ceiling of publish/subscribe).

Both run until killed.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from runtime import run_async

from contract.wire import RPC_QUEUE_GROUP

__all__ = ["echo", "main", "sink"]


async def echo(url: str, subject: str) -> None:
    """A bare responder: same queue group as the provider, replies with the request bytes."""
    import nats

    nc = await nats.connect(url, name="kvbench-echo")

    async def on_request(msg: Any) -> None:
        if msg.reply:
            await nc.publish(msg.reply, msg.data)

    await nc.subscribe(subject, queue=RPC_QUEUE_GROUP, cb=on_request)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


async def sink(url: str, subject: str, count: int, done: str) -> None:
    """Count messages on ``subject``; publish the count on ``done`` after every ``count``."""
    import nats

    nc = await nats.connect(url, name="kvbench-sink")
    received = 0

    async def on_message(msg: Any) -> None:
        nonlocal received
        received += 1
        if received % count == 0:  # one "done" per round of ``count`` messages
            await nc.publish(done, str(received).encode())

    await nc.subscribe(subject, cb=on_message)  # default limits, as the provider's
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark baseline processes (internal)")
    sub = parser.add_subparsers(dest="role", required=True)
    echo_args = sub.add_parser("echo", help="bare nats-py echo responder")
    sink_args = sub.add_parser("sink", help="count messages; publish on --done every --count")
    for p in (echo_args, sink_args):
        p.add_argument("--url", required=True)
        p.add_argument("--subject", required=True)
    sink_args.add_argument("--count", type=int, required=True)
    sink_args.add_argument("--done", required=True)
    args = parser.parse_args()
    if args.role == "echo":
        run_async(echo(args.url, args.subject))
    else:
        run_async(sink(args.url, args.subject, args.count, args.done))


if __name__ == "__main__":
    main()
