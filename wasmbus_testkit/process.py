"""Launching a provider exactly as a wasmCloud host does: one stdin line, stdin kept open.

The protocol (spec §1, §2) says the host writes one line, the base64 HostData, to the provider's
stdin and then leaves stdin open; the provider must read exactly one line and never wait for EOF.
Keeping stdin open here is what lets a test catch a provider that wrongly reads to EOF (it hangs
instead of starting). Any command can be launched: a Python module, a script, a PyInstaller
binary, a Rust provider.

Nothing in this module imports ``contract``: process handling must keep working while the wire
code is broken, so that its tests report real failures instead of import errors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from wasmbus_testkit.children import register_child
from wasmbus_testkit.waiting import wait_for

__all__ = ["ProviderProcess"]


class ProviderProcess:
    """A provider child process launched like the wasmCloud host launches it.

    ``cmd`` is the provider's command line (the host passes no arguments; a test may). ``env``
    replaces the inherited environment when given; ``PYTHONUNBUFFERED=1`` is added so a Python
    provider's log lines reach the file as they are written. ``cwd`` defaults to the current
    directory.

    stdout and stderr go to files (never pipes) so a chatty child can't block on a full pipe
    buffer, and the logs survive for debugging after the process is gone: by default two files
    in ``log_dir``, or with ``log_path`` both streams appended to that one file, in the order
    they were written (one log per provider that survives its restarts, as ``nats-kvcache dev``
    keeps them).

    ``new_process_group`` starts the child in a process group of its own, so a Ctrl-C in the
    terminal reaches only the program that launched it, which can then shut it down the way a
    host does (a shutdown request) instead of having it interrupted. ``reap_at_exit=False``
    leaves it out of the kit's at-exit SIGKILL, for a program that stops its children itself.
    """

    def __init__(
        self,
        stdin_line: bytes,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
        name: str = "provider",
        log_path: Path | None = None,
        new_process_group: bool = False,
        reap_at_exit: bool = True,
    ) -> None:
        self.stdin_line = stdin_line if stdin_line.endswith(b"\n") else stdin_line + b"\n"
        self.cmd = list(cmd)
        self.env = env
        self.cwd = cwd
        one_log = Path(log_path) if log_path else None
        if one_log is not None:
            self.log_dir = one_log.parent
        else:
            self.log_dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="provider-"))
        self.name = name
        self.stderr_path = one_log or self.log_dir / f"{name}.stderr.log"
        self.stdout_path = one_log or self.log_dir / f"{name}.stdout.log"
        self.new_process_group = new_process_group
        self.reap_at_exit = reap_at_exit
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProviderProcess:
        """Spawn the child and hand it its one stdin line; stdin stays open afterwards."""
        if self._proc is not None:
            raise RuntimeError("ProviderProcess already started")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with contextlib.ExitStack() as files:
            out = files.enter_context(open(self.stdout_path, "ab"))
            # One log for both: stderr shares stdout's descriptor, so lines keep their order.
            err: IO[bytes] | int = subprocess.STDOUT
            if self.stderr_path != self.stdout_path:
                err = files.enter_context(open(self.stderr_path, "ab"))
            self._proc = subprocess.Popen(
                self.cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                env=env,
                cwd=self.cwd,
                process_group=0 if self.new_process_group else None,
            )
        if self.reap_at_exit:
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

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM, then SIGKILL if it is still running after ``grace`` seconds; returns the
        exit status. For a provider that ignored its shutdown request, or when NATS is gone and
        no request can reach it."""
        self.terminate()
        try:
            return self.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait()

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
