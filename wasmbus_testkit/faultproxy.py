"""A NATS-aware TCP fault proxy: network failures on demand, between a client and nats-server.

Put it between a NATS client and nats-server, then switch fault modes while traffic flows:

* ``pass_through()`` / ``heal()`` - forward everything.
* ``cut()`` - abort every open connection (RST) and accept-then-abort new ones until healed:
  the client sees a reset and a refused reconnect, as with a crashed server or a dead link.
* ``blackhole()`` - keep connections open but discard traffic in both directions: the client
  sees a stalled connection (flushes and requests time out, PINGs go unanswered). Leaving
  blackhole mode resets the connections that lived through it (see below).
* ``stall()`` - stop moving bytes without losing any; on heal the backlog is delivered late.
  This is what a short real partition looks like (TCP retransmits), and it builds TCP
  backpressure on both ends.
* ``drop(probability, seed)`` - drop a fraction of the messages the server delivers.
* ``latency(seconds)`` - delay every byte by ``seconds`` each way, order kept (on top of any
  mode): a link between two zones instead of loopback.

Why the proxy understands the NATS protocol
-------------------------------------------
TCP is a byte stream, so dropping arbitrary bytes does not model message loss: it cuts a
protocol line in half and the client just fails with a parse error. Real NATS loss is loss of
*whole messages* (core NATS is at-most-once: slow-consumer eviction, a reconnect, a route
hiccup). So each direction is split into protocol frames:

* a control line ending in ``\\n`` - ``INFO``, ``CONNECT``, ``PING``, ``PONG``, ``+OK``, ``-ERR``,
  ``SUB``, ``UNSUB``, or
* a line with a payload - ``MSG``/``HMSG`` (server to client) and ``PUB``/``HPUB`` (client to
  server) - whose last token is the total payload size; the frame is the line plus that many
  bytes plus the trailing ``\\r\\n``.

``drop`` discards whole ``MSG``/``HMSG`` frames only (optionally only those whose subject starts
with a prefix), so the stream stays valid and the client never sees a protocol error - only
missing messages, exactly like real at-most-once loss. ``blackhole`` also discards whole
frames. Still, a connection that lost frames mid-stream is something no real network produces
(TCP delivers late or resets, it never skips), and clients are not built for it: nats-py, for
one, crashes its read loop when a PONG arrives for a PING whose flush already timed out. So when
the proxy leaves blackhole mode it resets every connection, as a partition that outlived the
peers' patience would; recovery then goes through the client's normal reconnect path. Use
``stall()`` for a partition short enough for the connection to survive.

The proxy runs its own event loop in a daemon thread, so sync tests, async tests (on any
loop) and fixtures can all drive it with plain method calls. Mode changes are applied on the
proxy's loop before the call returns: after ``blackhole()`` returns, no further frame gets
through.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["DELIVERY_OPS", "PAYLOAD_OPS", "FaultProxy", "Frame", "FrameSplitter", "Mode"]

PAYLOAD_OPS = frozenset({b"MSG", b"HMSG", b"PUB", b"HPUB"})
DELIVERY_OPS = frozenset({b"MSG", b"HMSG"})
# A control line longer than this without a newline is not NATS; pass the bytes on unparsed.
MAX_CONTROL_LINE = 1 << 20
READ_SIZE = 64 * 1024


class Mode(Enum):
    """The proxy's current fault (``latency`` is separate: it combines with any mode)."""

    PASS = "pass"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    STALL = "stall"
    DROP = "drop"


@dataclass
class Frame:
    """One NATS protocol unit: the raw bytes, its op (``b"MSG"``...) and subject if any."""

    data: bytes
    op: bytes
    subject: bytes = b""


class FrameSplitter:
    """Incrementally splits a NATS byte stream into whole protocol frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while True:
            frame = self._next()
            if frame is None:
                return
            yield frame

    def _next(self) -> Frame | None:
        buf = self._buf
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) > MAX_CONTROL_LINE:  # not NATS: forward raw rather than stall forever
                return self._take(len(buf), b"", b"")
            return None
        tokens = bytes(buf[:end]).split()
        op = tokens[0].upper() if tokens else b""
        size = 0
        if op in PAYLOAD_OPS and len(tokens) >= 3:
            try:
                size = int(tokens[-1]) + 2  # payload plus its trailing CRLF
            except ValueError:
                size = 0
        total = end + 1 + size
        if len(buf) < total:
            return None
        return self._take(total, op, tokens[1] if len(tokens) > 1 else b"")

    def _take(self, n: int, op: bytes, subject: bytes) -> Frame:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return Frame(data, op, subject)


class FaultProxy:
    """Loopback TCP proxy to ``target_host:target_port`` with runtime-switchable faults."""

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1"):
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self.mode = Mode.PASS
        # Counters (read from any thread; ints are updated only on the proxy loop).
        self.connections = 0
        self.forwarded = 0
        self.dropped = 0
        self.discarded = 0
        self._latency = 0.0
        self._drop_probability = 0.0
        self._drop_prefix: bytes | None = None
        self._rng = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing: asyncio.Event | None = None  # cleared while stalled
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"nats://{self.listen_host}:{self.port}"

    # -- lifecycle (callable from any thread except the proxy's own) --------------------------

    def start(self) -> int:
        """Start the proxy thread and listener; return the listening port."""
        if self._thread is not None:
            return self.port
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"FaultProxy->{self.target_port}", daemon=True
        )
        self._thread.start()
        self._call(self._listen())
        return self.port

    def stop(self) -> None:
        """Close the listener and every connection, then stop the proxy thread."""
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- fault modes ---------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Forward everything in both directions."""
        self._call(self._set_mode(Mode.PASS))

    heal = pass_through

    def cut(self) -> None:
        """Abort all connections now and abort every new one until healed."""
        self._call(self._set_mode(Mode.CUT))

    def blackhole(self) -> None:
        """Keep connections open but discard every frame both ways (a stalled link)."""
        self._call(self._set_mode(Mode.BLACKHOLE))

    def stall(self) -> None:
        """Hold all bytes (no loss) until healed; the backlog is then delivered in order."""
        self._call(self._set_mode(Mode.STALL))

    def drop(
        self, probability: float, seed: int | None = None, subject_prefix: str | None = None
    ) -> None:
        """Drop each server-to-client MSG/HMSG with ``probability`` (seeded, reproducible).

        Only whole delivered messages are dropped; control lines always pass, so the client's
        connection stays valid. ``subject_prefix`` limits the loss to matching subjects.
        """
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        prefix = subject_prefix.encode() if subject_prefix is not None else None

        async def configure() -> None:  # on the proxy loop, so no frame sees a half-set state
            self._drop_probability, self._drop_prefix = probability, prefix
            self._rng = random.Random(seed)
            await self._set_mode(Mode.DROP)

        self._call(configure())

    def latency(self, seconds: float) -> None:
        """Delay every frame by ``seconds`` in each direction, keeping order; 0 turns it off."""
        if seconds < 0:
            raise ValueError("latency must not be negative")

        async def configure() -> None:
            self._latency = seconds

        self._call(configure())

    # -- internals (run on the proxy loop) ----------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("FaultProxy not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for task in list(self._tasks):  # connection handlers; each one cancels its pumps
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _set_mode(self, mode: Mode) -> None:
        previous, self.mode = self.mode, mode
        if mode is Mode.CUT or (previous is Mode.BLACKHOLE and mode is not Mode.BLACKHOLE):
            self._abort_all()
        assert self._flowing is not None
        if mode is Mode.STALL:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _abort_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(client_r, client_w)
        except asyncio.CancelledError:
            pass  # stop(): asyncio's stream callback would log a cancelled handler as an error
        finally:
            self._tasks.discard(task)

    def _current_mode(self) -> Mode:
        """The mode now (a method call, so the checker does not narrow it across an await)."""
        return self.mode

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.mode is Mode.CUT:
            client_w.transport.abort()
            return
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()  # upstream down: the client sees a failed connect
            return
        # The mode may have changed while we awaited the upstream connect: read it afresh.
        if self._current_mode() is Mode.CUT:  # cut while we were connecting upstream
            client_w.transport.abort()
            server_w.transport.abort()
            return
        self._writers |= {client_w, server_w}
        pumps = [
            asyncio.ensure_future(self._pump(client_r, server_w, to_client=False)),
            asyncio.ensure_future(self._pump(server_r, client_w, to_client=True)),
        ]
        try:
            # When either side ends, end the other: a half-open NATS connection is useless.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_client: bool
    ) -> None:
        splitter = FrameSplitter()
        loop = asyncio.get_running_loop()
        outgoing: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._deliver(outgoing, writer))
        try:
            while not sender.done():
                try:
                    data = await reader.read(READ_SIZE)
                except OSError:
                    return
                if not data:
                    return
                assert self._flowing is not None
                await self._flowing.wait()  # stall: hold this chunk, and stop reading more
                out = bytearray()
                for frame in splitter.feed(data):
                    if self._passes(frame, to_client):
                        out += frame.data
                if out:
                    outgoing.put_nowait((loop.time() + self._latency, bytes(out)))
        finally:
            sender.cancel()

    async def _deliver(
        self, outgoing: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        """Write each chunk once its delivery time has come (in order: one queue per way)."""
        loop = asyncio.get_running_loop()
        while True:
            due, data = await outgoing.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            try:
                await writer.drain()
            except OSError:
                return

    def _passes(self, frame: Frame, to_client: bool) -> bool:
        mode = self.mode
        if mode is Mode.BLACKHOLE or mode is Mode.CUT:
            self.discarded += 1
            return False
        if mode is Mode.DROP and to_client and frame.op in DELIVERY_OPS:
            prefix = self._drop_prefix
            if (prefix is None or frame.subject.startswith(prefix)) and (
                self._rng.random() < self._drop_probability
            ):
                self.dropped += 1
                return False
        self.forwarded += 1
        return True
