"""Bookkeeping for child processes: reap every one at exit, and read their logs' tails.

A test that crashes between starting a nats-server and stopping it must not leave the server
running (it would hold ports and CPU for the rest of the run). Every child the kit starts is
registered here; :func:`kill_all_children` runs at interpreter exit and, through the pytest
plugin, at the end of the session.
"""

from __future__ import annotations

import atexit
import contextlib
import weakref
from pathlib import Path
from typing import Protocol

__all__ = ["Killable", "kill_all_children", "register_child", "tail"]


class Killable(Protocol):
    """Anything with a ``kill()`` that ends it at once (servers, provider processes)."""

    def kill(self) -> None: ...


# Every child started through this package, so a crashed test run can still reap them.
_live_children: weakref.WeakSet[Killable] = weakref.WeakSet()


def register_child(child: Killable) -> None:
    """Track a kit-managed child so :func:`kill_all_children` can reap it."""
    _live_children.add(child)


def kill_all_children() -> None:
    """SIGKILL every kit child still alive; the last line of defence at session end."""
    for child in list(_live_children):
        # Best effort: reaping must never mask the real test failure.
        with contextlib.suppress(Exception):
            child.kill()


# Also outside pytest (the kit used from a script): no nats-server outlives the interpreter.
atexit.register(kill_all_children)


def tail(path: Path, max_bytes: int = 8000, *, lines: int | None = None) -> str:
    """Last ``max_bytes`` of a log file (and of those, the last ``lines`` lines), for failure
    reports; ``""`` when it cannot be read.

    Only the end is read: a long-running provider's log (``nats-kvcache dev``) can be large.
    """
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, 2) - max_bytes))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return text if lines is None else "\n".join(text.splitlines()[-lines:])
