"""Entry point: ``nats-kvcache-provider`` and ``python -m provider`` (no arguments).

The host writes one base64 HostData line to stdin and keeps stdin open, so exactly one line is
read: reading to EOF would block forever (spec §1-§2). Start-up errors are fatal: printed to
stderr, exit status 1.
"""

from __future__ import annotations

import asyncio
import sys

from contract.wire import HostData, HostDataError
from provider import logs


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

    try:
        code = asyncio.run(ProviderDaemon(host_data).run())
    except KeyboardInterrupt:
        code = 0
    except Exception as error:
        print(f"nats-kvcache-provider: fatal: {type(error).__name__}: {error}", file=sys.stderr)
        code = 1
    sys.exit(code)
