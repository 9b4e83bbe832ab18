"""The bound on clock offset, shared by both backends: refuse stamps from the future, say so.

A stamp far ahead of our wall clock would win over every write we make until our clock catches
up (a 120 s fast peer made acknowledged writes vanish), so such changes are refused. Refusing
alone would leave the skewed instance unaware that its writes go nowhere, so both sides must
hear about it:

* the receiver counts the refusal (``clock_refused``) and names the offender in its health;
* the offender gets a signed ``ck`` notice (at most one per :data:`CLOCK_NOTICE_INTERVAL` per
  peer, so a burst of skewed writes costs one notice, not one per write) and then reports
  itself unhealthy, with the reason, for :data:`CLOCK_REPORT_SECS`.

The backends differ only in *where* a notice goes (plain mode: the peer's direct subject;
JetStream mode: the peer's ack subject), so they pass a ``notify`` callback and keep the rest
here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from provider.store import Change
from provider.store.hlc import wall_ms

from . import messages as m
from .messages import Kind

#: A peer whose stamps we refuse hears about it at most once per this many seconds.
CLOCK_NOTICE_INTERVAL = 1.0
#: Clock refusals (ours and our peers') show in health this long after the last one.
CLOCK_REPORT_SECS = 15.0
#: Peers remembered as clock offenders (the longest-ago is forgotten first): a flood of fresh
#: node ids must not grow these tables.
MAX_CLOCK_OFFENDERS = 32

#: ``notify(peer, body)``: send the encoded (unsigned) ``ck`` message ``body`` to ``peer``.
Notify = Callable[[str, bytes], None]


class ClockGuard:
    """Refuses changes stamped too far ahead, and keeps both sides' view of it for health."""

    def __init__(
        self,
        node: str,
        max_offset_ms: int,
        *,
        clock: Callable[[], float],
        counters: dict[str, Any],
        log: Any,
        notify: Notify,
        wall: Callable[[], int] = wall_ms,
    ) -> None:
        self.node = node
        self.max_offset_ms = max_offset_ms
        self._clock = clock
        self._wall = wall
        self._counters = counters
        counters.setdefault("clock_refused", 0)
        self._log = log
        self._notify = notify
        #: Peers whose stamps we refused: node -> (ms ahead, when).
        self._offenders: dict[str, tuple[int, float]] = {}
        #: Peers that told us they refuse our stamps: node -> (ms ahead, when).
        self._refused_by: dict[str, tuple[int, float]] = {}
        self._notices: dict[str, float] = {}

    def allows(self, peer: str, changes: Iterable[Change]) -> bool:
        """False (counted, remembered, peer told) when a stamp runs too far ahead of ours.

        ``peer`` is the node that wrote the changes; ``""`` when unknown (then nobody can be
        named or told, but the changes are still refused).
        """
        ahead = m.ahead_ms(list(changes), self._wall())
        if ahead <= self.max_offset_ms:
            return True
        self._counters["clock_refused"] += 1
        if not peer or peer == self.node:
            return False
        now = self._clock()
        first = peer not in self._offenders
        _remember(self._offenders, peer, (ahead, now))
        if first:
            self._log.warning(
                "refusing a peer's changes: its clock runs ahead of ours",
                peer=peer,
                ahead_ms=ahead,
                max_clock_offset_ms=self.max_offset_ms,
            )
        if now - self._notices.get(peer, -CLOCK_NOTICE_INTERVAL) >= CLOCK_NOTICE_INTERVAL:
            _remember(self._notices, peer, now)
            self._notify(peer, m.encode(m.Message(Kind.CLOCK_REFUSED, self.node, ahead_ms=ahead)))
        return False

    def refused_by(self, peer: str, ahead_ms: int) -> None:
        """A (trusted) peer told us it refuses our stamps: we are the skewed one."""
        if peer == self.node:
            return
        first = peer not in self._refused_by
        _remember(self._refused_by, peer, (ahead_ms, self._clock()))
        if first:
            self._log.error(
                "a peer refuses this instance's writes: our clock runs ahead of it",
                peer=peer,
                ahead_ms=ahead_ms,
                max_clock_offset_ms=self.max_offset_ms,
            )

    def problem(self) -> str | None:
        """Why this instance is unhealthy because of its own clock, or None."""
        refusing = _recent(self._refused_by, self._clock())
        if not refusing:
            return None
        peer, (ahead, _) = refusing[0]
        return (
            f"peers refuse this instance's writes: its clock runs {ahead} ms ahead of peer "
            f"{peer} (MAX_CLOCK_OFFSET_MS={self.max_offset_ms}); fix time sync"
        )

    def notes(self) -> list[str]:
        """Health notes naming the peers whose stamps we refuse (we stay healthy)."""
        return [
            f"refusing changes from peer {peer}: its clock runs {ahead} ms ahead "
            f"(MAX_CLOCK_OFFSET_MS={self.max_offset_ms})"
            for peer, (ahead, _) in _recent(self._offenders, self._clock())
        ]

    def offenders(self) -> list[str]:
        return [peer for peer, _ in _recent(self._offenders, self._clock())]

    def refusers(self) -> list[str]:
        return [peer for peer, _ in _recent(self._refused_by, self._clock())]


def _remember(table: dict, key: str, value: object) -> None:
    """Set ``table[key]``, keeping at most :data:`MAX_CLOCK_OFFENDERS` (oldest go first)."""
    table.pop(key, None)
    table[key] = value
    while len(table) > MAX_CLOCK_OFFENDERS:
        del table[next(iter(table))]


def _recent(table: dict[str, tuple[int, float]], now: float) -> list[tuple[str, tuple[int, float]]]:
    return [(peer, entry) for peer, entry in table.items() if now - entry[1] <= CLOCK_REPORT_SECS]
