"""Write acknowledgements from peers: read-your-writes across instances. Pure (no I/O).

A host spreads one actor's calls over every instance, so a write answered by one instance must
be visible on whichever instance answers next. With ``WRITE_ACK=peers`` (the default) a write is
answered once every connected peer has confirmed that it applied the batch carrying it.

Availability comes first. A peer that has not confirmed a batch within the bound
(``WRITE_ACK_TIMEOUT_MS``) is marked *lagging*; the write is answered anyway, and later writes
do not wait for that peer until it confirms a batch again. A partition therefore costs one
bound, not one bound per write, and never makes a write fail.

The tracker holds plain futures and is driven by its owner: :meth:`AckTracker.expect` when a
batch goes out, :meth:`AckTracker.acked` when a confirmation arrives and
:meth:`AckTracker.expire` when the bound passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class _Outstanding:
    waiting: set[str]
    futures: list[asyncio.Future] = field(default_factory=list)


class AckTracker:
    """Which peers still owe a confirmation for each batch, and which peers lag."""

    def __init__(self) -> None:
        self._outstanding: dict[int, _Outstanding] = {}
        #: Lagging peer -> the batch number it failed to confirm.
        self.lagging: dict[str, int] = {}
        self.timeouts = 0

    def targets(self, live_peers: Iterable[str]) -> set[str]:
        """The peers a new write waits for: the live ones that are not lagging."""
        return {peer for peer in live_peers if peer not in self.lagging}

    def expect(self, seq: int, peers: set[str], futures: list[asyncio.Future]) -> None:
        """Batch ``seq`` went out to ``peers``; ``futures`` complete once all confirmed."""
        if not peers:
            _resolve(futures)
            return
        self._outstanding[seq] = _Outstanding(set(peers), futures)

    def acked(self, peer: str, seqs: Iterable[int]) -> None:
        """``peer`` confirmed batches ``seqs``: release the writes nobody else holds up."""
        lagged_at = self.lagging.get(peer)
        for seq in seqs:
            if lagged_at is not None and seq > lagged_at:
                del self.lagging[peer]  # it confirms again: it has caught up with the live stream
                lagged_at = None
            outstanding = self._outstanding.get(seq)
            if outstanding is None:
                continue
            outstanding.waiting.discard(peer)
            if not outstanding.waiting:
                del self._outstanding[seq]
                _resolve(outstanding.futures)

    def acked_up_to(self, peer: str, seq: int) -> None:
        """``peer`` applied everything up to ``seq`` (a stream applied in order)."""
        self.acked(peer, [s for s in list(self._outstanding) if s <= seq] or [seq])

    def caught_up(self, peer: str) -> None:
        """``peer`` is known to hold everything we hold (equal digests): no longer lagging."""
        self.lagging.pop(peer, None)

    def expire(self, seq: int) -> list[str]:
        """The bound for batch ``seq`` passed: answer its writes; returns the peers now lagging."""
        outstanding = self._outstanding.pop(seq, None)
        if outstanding is None:
            return []
        late = sorted(outstanding.waiting)
        for peer in late:
            self.lagging.setdefault(peer, seq)
        if late:
            self.timeouts += 1
        _resolve(outstanding.futures)
        return late

    def forget(self, live_peers: Iterable[str]) -> None:
        """Drop lagging marks of peers that are gone (silent past the expiry)."""
        live = set(live_peers)
        for peer in [p for p in self.lagging if p not in live]:
            del self.lagging[peer]

    def release_all(self) -> None:
        """Answer every write still waiting (our connection dropped, or we are stopping)."""
        for outstanding in self._outstanding.values():
            _resolve(outstanding.futures)
        self._outstanding.clear()

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def lagging_note(self) -> str | None:
        """The health note naming lagging peers (both backends), or None."""
        if not self.lagging:
            return None
        return (
            f"lagging peers {', '.join(sorted(self.lagging))}: writes do not wait for them, "
            "and they may serve stale reads until they confirm again"
        )


def report_late(log: Any, late: list[str], timeout_ms: int) -> None:
    """Log the peers :meth:`AckTracker.expire` just marked lagging (if any)."""
    if late:
        log.warning(
            "peer did not confirm a write in time; answering without it, marked lagging",
            peers=late,
            timeout_ms=timeout_ms,
        )


def _resolve(futures: list[asyncio.Future]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)
