"""Polling waits: ask until the system is ready instead of sleeping a guessed time.

A test that sleeps is either slow on a fast machine or flaky on a slow one. These helpers poll
a predicate (sync or async) at a short interval and give up after a timeout, chaining the last
exception the predicate raised onto the ``TimeoutError`` so a failed wait says *why*.
:func:`flush_in_order` waits for the one thing a predicate cannot see: that the server has
processed what a connection sent.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["flush_in_order", "wait_for", "wait_for_sync"]

T = TypeVar("T")


@overload
async def wait_for(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_for(
    predicate: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; return that value.

    Tests poll instead of sleeping so they are as fast as the system allows and still tolerate
    a slow CI machine. Exceptions from the predicate count as "not yet" and the last one is
    chained onto the TimeoutError, which makes flaky waits debuggable.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
        except Exception as exc:  # the predicate is allowed to fail while the system settles
            last_exc = exc
        if time.monotonic() >= deadline:
            raise _timeout(timeout, message) from last_exc
        await asyncio.sleep(interval)


def wait_for_sync(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Blocking twin of :func:`wait_for` for sync code such as server start-up."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            raise _timeout(timeout, message) from last_exc
        time.sleep(interval)


def _timeout(timeout: float, message: str) -> TimeoutError:
    return TimeoutError(f"timed out after {timeout:.1f}s waiting for {message}")


async def flush_in_order(nc: Client, timeout: int = 5) -> None:
    """Return once the server has processed every command queued on ``nc`` before the call.

    nats-py's ``flush()`` writes its PING straight to the socket, ahead of commands still
    queued for the connection's flusher task. A ``SUB`` made just before can then reach the
    server after the PONG has come back, and a message published at that moment from another
    connection misses it (seen under load through the fault proxy). The flusher writes the
    queue while the first PING is out, so the PONG of a second one vouches for all of it.
    """
    await nc.flush(timeout)
    await nc.flush(timeout)
