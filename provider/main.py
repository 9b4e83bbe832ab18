"""Entry point: ``nats-kvcache-provider`` and ``python -m provider`` (no arguments).

The host writes one base64 HostData line to stdin and keeps stdin open, so exactly one line is
read: reading to EOF would block forever (spec §1-§2). Start-up errors are fatal: printed to
stderr, exit status 1.

SIGTERM / SIGINT mean "stop cleanly, exit 0" from the first line of :func:`main` on: a signal
that arrives before the event loop runs is remembered and handed to the daemon, which installs
its own handlers first thing. The loop's teardown is bounded too (see :func:`_run`), so a task
that ignores its cancellation cannot keep the process alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

from contract.wire import HostData, HostDataError
from provider import logs

if TYPE_CHECKING:  # imported at run time only once logging is configured
    from provider.daemon import ProviderDaemon

#: Signals caught before the daemon's own handlers were installed.
_early_signals: list[int] = []
#: How long leftover tasks get to finish after the daemon returned.
TEARDOWN_SECONDS = 0.3


def _remember_signal(signum: int, _frame: object) -> None:
    _early_signals.append(signum)


def _catch_early_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError, OSError):  # not the main thread / not supported
            signal.signal(signum, _remember_signal)


def _run(daemon: ProviderDaemon) -> tuple[int, bool]:
    """Run the daemon; returns (exit status, whether the loop closed cleanly).

    Like ``asyncio.run``, except that waiting for cancelled leftover tasks (and async
    generators) is bounded: ``asyncio.run`` would wait for them forever.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        code = loop.run_until_complete(daemon.run(early_signals=_early_signals))
    except KeyboardInterrupt:
        code = 0
    except Exception as error:
        print(f"nats-kvcache-provider: fatal: {type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    clean = True
    try:
        leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            _, pending = loop.run_until_complete(asyncio.wait(leftovers, timeout=TEARDOWN_SECONDS))
            clean = not pending
        if clean:
            generators = loop.create_task(loop.shutdown_asyncgens())
            _, pending = loop.run_until_complete(asyncio.wait({generators}, timeout=0.1))
            clean = not pending
        if clean:
            loop.close()
    except Exception:
        clean = False
    return code, clean


def _install_fast_loop() -> None:
    try:
        import uvloop
    except ImportError:  # uvloop is optional; the stock loop works, just slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _check_names(host_data: HostData) -> None:
    """Refuse a lattice prefix or link name that would make wildcard or empty subject tokens:
    ``wasmbus.rpc.*.…`` would subscribe to every lattice's calls."""
    from provider.replication.config import unusable_name

    for field, value in (
        ("lattice_rpc_prefix", host_data.lattice_rpc_prefix),
        ("link_name", host_data.link_name),
    ):
        if unusable_name(value):
            raise HostDataError(
                f"{field} {value!r} cannot name NATS subjects: it must be non-empty and "
                "contain no empty or wildcard ('*', '>') token"
            )


def main() -> None:
    _catch_early_signals()
    line = sys.stdin.buffer.readline()
    try:
        host_data = HostData.from_stdin_line(line)
        host_data.credentials()  # exactly one of JWT/seed set is a configuration error
        _check_names(host_data)
    except HostDataError as error:
        print(f"nats-kvcache-provider: {error}", file=sys.stderr)
        sys.exit(1)
    logs.configure(structured=host_data.structured_logging, log_level=host_data.log_level)
    _install_fast_loop()
    from provider.daemon import ProviderDaemon  # after logging is configured

    code, clean = _run(ProviderDaemon(host_data))
    if not clean:  # a task would not stop: do not let it (or its thread) hold the exit
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
