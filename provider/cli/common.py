"""What every ``nats-kvcache`` subcommand shares: exit codes, the usage error, the default NATS
URL, quiet nats-py callbacks, one-line error messages and the command to print in hints.

Exit codes are the same for every subcommand: 0 success, 1 a negative answer or a failure,
2 bad usage or missing settings (argparse's own code), 3 NATS or the provider could not be
reached, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client as NATS

from provider.logs import redact_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

CONSOLE_SCRIPT = "nats-kvcache"

#: Set to any non-empty value to get a traceback for an unexpected error.
DEBUG_ENV = "NATS_KVCACHE_DEBUG"


class UsageError(Exception):
    """Bad arguments or missing settings (exit code 2); the text says what to change."""


class Unreachable(Exception):
    """No answer from NATS or from the provider (exit code 3)."""


def error(command: str, message: str | Exception) -> None:
    """``nats-kvcache COMMAND: message`` on stderr."""
    print(f"nats-kvcache {command}: {message}", file=sys.stderr, flush=True)


def warn(command: str, message: str | Exception) -> None:
    print(f"nats-kvcache {command}: warning: {message}", file=sys.stderr, flush=True)


def parse_int(text: str, what: str = "an integer") -> int:
    """``text`` as an int, or the argparse error naming ``what`` it should have been."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def instance_index(text: str) -> int:
    """argparse type of a dev instance index (``call --instance N``, ``instance kill N``)."""
    value = parse_int(text, "an instance index")
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


class QuietCallbacks:
    """nats-py's default error callback logs every connection failure with a traceback; these
    callbacks swallow them and remember the last error, so the caller can say it in one line."""

    def __init__(self) -> None:
        self.last_error: BaseException | None = None

    async def error_cb(self, error: Exception) -> None:
        self.last_error = error

    async def silent_cb(self) -> None:
        """For ``disconnected_cb``/``closed_cb``/``reconnected_cb``: nothing to say."""

    def options(self) -> dict[str, Any]:
        return {
            "error_cb": self.error_cb,
            "disconnected_cb": self.silent_cb,
            "closed_cb": self.silent_cb,
            "reconnected_cb": self.silent_cb,
        }


async def quiet_error_cb(_: Exception) -> None:
    """An ``error_cb`` for long-lived connections whose failures surface as exceptions."""


def describe_connect_error(error: BaseException | None, fallback: BaseException) -> str:
    """Plain words for why a connection failed (nats-py only says "no servers available")."""
    cause = error or fallback
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError) or type(cause).__name__ == "TimeoutError":
        return "timed out"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    text = str(cause).removeprefix("nats: ").strip()
    return text or type(cause).__name__


async def connect(
    url: str, *, name: str, timeout: float, connect_hint: str, **options: Any
) -> NATS:
    """One connection attempt, no reconnects, no tracebacks; :class:`Unreachable` on failure
    with the reason and ``connect_hint`` (what to do) in the message."""
    callbacks = QuietCallbacks()
    settings: dict[str, Any] = {
        "servers": url.split(","),
        "name": name,
        "connect_timeout": timeout,
        "allow_reconnect": False,
        "max_reconnect_attempts": 1,  # 0 would retry forever (nats-py quirk)
        "reconnect_time_wait": 0.1,
        **callbacks.options(),
    }
    settings.update(options)
    try:
        return await nats.connect(**settings)
    except Exception as failure:
        reason = describe_connect_error(callbacks.last_error, failure)
        raise Unreachable(
            f"cannot connect to NATS at {redact_url(url)}: {reason}; {connect_hint}"
        ) from None


def program() -> str:
    """The command a user can paste to run this CLI again, from the current directory.

    ``nats-kvcache`` when that is what the shell finds on ``PATH``, else the path of the running
    executable (relative when it is under the current directory, e.g. ``.venv/bin/nats-kvcache``).
    Run as ``python -m provider.cli[.main]``: the console script next to that interpreter if there
    is one, else ``python -m provider.cli`` with the running interpreter."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    name = os.path.basename(argv0)
    if not argv0 or argv0 in ("-m", "-c") or name.endswith(".py"):
        script = Path(sys.executable).parent / CONSOLE_SCRIPT
        if not script.is_file():
            return shlex.join([_display_path(sys.executable), "-m", "provider.cli"])
        argv0, name = str(script), CONSOLE_SCRIPT
    on_path = shutil.which(name) if name else None
    if on_path and _same_file(on_path, argv0):
        return name
    return shlex.quote(_display_path(argv0))


def _display_path(path: str) -> str:
    absolute = Path(os.path.abspath(path))
    try:
        relative = absolute.relative_to(Path.cwd())
    except ValueError:
        return str(absolute)
    text = str(relative)
    return text if os.sep in text else f".{os.sep}{text}"


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
