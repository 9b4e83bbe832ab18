"""Start-up shared by every bench process: the clock check, the event loop, option defaults.

The orchestrators, the driver and the baseline processes compare ``time.perf_counter()`` values
across processes, so each checks at start that it is the system-wide monotonic clock; the async
ones run on uvloop like the provider, so both sides of a measurement use the same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Coroutine, Mapping
from typing import Any

__all__ = ["check_clock", "fill_defaults", "run_async"]


def check_clock() -> None:
    """Cross-process timestamps rely on perf_counter being the system-wide monotonic clock."""
    info = time.get_clock_info("perf_counter")
    if "CLOCK_MONOTONIC" not in info.implementation:
        raise SystemExit(f"perf_counter is {info.implementation}; need CLOCK_MONOTONIC (Linux)")


def run_async(main: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine on uvloop when available (the provider uses it too)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def fill_defaults(
    args: argparse.Namespace, *, quick: Mapping[str, Any], full: Mapping[str, Any]
) -> None:
    """Give every option the command line left unset its ``--quick`` or full-run default."""
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
