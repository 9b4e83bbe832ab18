"""Ed25519 verification on the second core, in batches.

Checking an invocation's signature is the most expensive step of an RPC (~45 µs of ~70 µs of
our own work per call), and Python runs one thread of Python at a time. So under load the
signatures of the calls that arrived together are sent, as one batch, to a small worker process
(:mod:`provider.rpc.verify_worker`) while the event loop goes on decoding the next calls and
answering the previous ones. When calls trickle in one at a time, shipping them would only add
latency, so they are verified inline.

Nothing is skipped or cached: every signature is checked, and each verdict is matched to its own
call by position in an ordered pipe. If the worker dies, verification continues inline.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections import deque
from collections.abc import Callable

import msgpack
import structlog

from contract.claims import signature_valid

log = structlog.get_logger("provider.rpc.verifier")

Job = tuple[bytes, bytes, bytes]  # issuer key, signing input, signature
Done = Callable[[list[bool]], None]

#: Batches this small are verified inline when the worker has nothing in flight: the pipe
#: round trip would cost more latency than it saves.
INLINE_MAX = 2
#: With this many batches already queued at the worker, the event loop verifies the next batch
#: itself: both cores stay busy instead of the loop idling behind a saturated worker.
WORKER_QUEUE_MAX = 2
_LENGTH = struct.Struct("<I")


def worker_command() -> list[str]:
    """How to start the worker. A frozen build (the provider archive) dispatches ``-m`` itself:
    see :mod:`provider.cli.par_entry`."""
    return [sys.executable, "-m", "provider.rpc.verify_worker"]


class SignatureVerifier:
    def __init__(self, *, use_worker: bool = True) -> None:
        self._use_worker = use_worker
        self._process: asyncio.subprocess.Process | None = None
        self._in_flight: deque[tuple[list[Job], Done]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self.batches_offloaded = 0
        self.verified_inline = 0

    async def start(self) -> None:
        if not self._use_worker:
            return
        try:
            self._process = await asyncio.create_subprocess_exec(
                *worker_command(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        except Exception as error:
            log.warning("verification worker not started; verifying inline", error=str(error))
            return
        self._reader = asyncio.create_task(self._read_verdicts(), name="verifier")

    async def stop(self) -> None:
        process, self._process = self._process, None
        if self._reader is not None:
            self._reader.cancel()
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        self._drain_inline()

    def submit(self, jobs: list[Job], done: Done) -> None:
        """Verify ``jobs``; ``done`` gets one verdict per job, in order (maybe synchronously)."""
        process = self._process
        queued = len(self._in_flight)
        if (
            process is None
            or (queued == 0 and len(jobs) <= INLINE_MAX)
            or queued >= WORKER_QUEUE_MAX
        ):
            self.verified_inline += len(jobs)
            done([signature_valid(*job) for job in jobs])
            return
        body = msgpack.packb(jobs, use_bin_type=True)
        try:
            assert process.stdin is not None  # started with stdin=PIPE
            process.stdin.write(_LENGTH.pack(len(body)) + body)
        except Exception:  # the worker is gone: fall back, never drop a call
            self._worker_lost()
            self.verified_inline += len(jobs)
            done([signature_valid(*job) for job in jobs])
            return
        self._in_flight.append((jobs, done))
        self.batches_offloaded += 1

    async def _read_verdicts(self) -> None:
        assert self._process is not None and self._process.stdout is not None  # stdout=PIPE
        stdout = self._process.stdout
        try:
            while True:
                header = await stdout.readexactly(_LENGTH.size)
                verdicts = await stdout.readexactly(_LENGTH.unpack(header)[0])
                jobs, done = self._in_flight.popleft()
                if len(verdicts) != len(jobs):  # never guess: check these ourselves
                    done([signature_valid(*job) for job in jobs])
                else:
                    done([v == 1 for v in verdicts])
        except (asyncio.IncompleteReadError, ConnectionError):
            self._worker_lost()
        except asyncio.CancelledError:
            raise

    def _worker_lost(self) -> None:
        if self._process is not None:
            log.warning("verification worker exited; verifying inline from now on")
            self._process = None
        self._drain_inline()

    def _drain_inline(self) -> None:
        while self._in_flight:
            jobs, done = self._in_flight.popleft()
            done([signature_valid(*job) for job in jobs])
