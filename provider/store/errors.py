"""Errors a key-value operation can answer with.

The texts are Redis' own, because actors written against the Redis-backed provider may match on
them, and because operators recognise them.
"""


class StoreError(Exception):
    """An operation was refused; nothing was changed. ``str(error)`` is the reply text."""


class WrongTypeError(StoreError):
    def __init__(self) -> None:
        super().__init__("WRONGTYPE Operation against a key holding the wrong kind of value")


class NotIntegerError(StoreError):
    def __init__(self) -> None:
        super().__init__("ERR value is not an integer or out of range")


class IncrementOverflowError(StoreError):
    def __init__(self) -> None:
        super().__init__("ERR increment or decrement would overflow")


class TooLargeError(StoreError):
    """A key or value beyond the configured bounds."""


class OutOfMemoryError(StoreError):
    """The store's estimated memory is above ``MAX_MEMORY``; the write would grow it."""

    def __init__(self) -> None:
        super().__init__("OOM command not allowed when used memory > 'maxmemory'.")


class TooMuchWorkError(StoreError):
    """A read whose arguments or result exceed the documented per-call bounds."""
