"""An asyncio loop in a background thread, for driving a FakeHost from synchronous code.

Some tests cannot be coroutines: hypothesis ``@given`` tests, for one, cannot take
pytest-asyncio's function-scoped fixtures. They start a :class:`ThreadLoop` and run the kit's
coroutines on it with :meth:`ThreadLoop.run`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["ThreadLoop"]

T = TypeVar("T")


class ThreadLoop:
    """An asyncio loop in a daemon thread, driven from synchronous code with :meth:`run`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ThreadLoop")
        self._thread.daemon = True

    def __enter__(self) -> ThreadLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and block until its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
