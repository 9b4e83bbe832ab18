"""provider.store.hlc: the hybrid clock, directly and through replica merges.

A replica that applies a peer's higher-stamped write must observe that stamp, or its next local
write (causally later) can carry a smaller stamp and lose under last-writer-wins. These tests
fail if ``KeyValueStore.apply`` stops calling ``clock.observe`` or the clock stops absorbing.
"""

from __future__ import annotations

from provider.store import KeyValueStore
from provider.store.hlc import LOGICAL_BITS, MAX_FORWARD_DRIFT_MS, HybridClock, stamp_ms

START_MS = 1_700_000_000_000


class FakeClock:
    def __init__(self, now: int = START_MS) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_stamps_strictly_increase_while_the_wall_clock_stands_still() -> None:
    clock = HybridClock(FakeClock())
    stamps = [clock.now() for _ in range(5)]
    assert stamps == sorted(set(stamps))
    assert all(stamp_ms(s) == START_MS for s in stamps)


def test_stamps_never_go_backwards_when_the_wall_clock_does() -> None:
    wall = FakeClock()
    clock = HybridClock(wall)
    before = clock.now()
    wall.now -= 5_000
    assert clock.now() > before


def test_observe_moves_the_next_stamp_past_a_peer_stamp() -> None:
    clock = HybridClock(FakeClock())
    remote = (START_MS + 1_000) << LOGICAL_BITS | 7
    clock.observe(remote)
    assert clock.last == remote
    assert clock.now() > remote


def test_observe_of_an_older_stamp_changes_nothing() -> None:
    clock = HybridClock(FakeClock())
    mine = clock.now()
    clock.observe(mine - 10)
    assert clock.last == mine


def test_drift_guard_refuses_a_stamp_too_far_ahead() -> None:
    clock = HybridClock(FakeClock())
    mine = clock.now()
    clock.observe((START_MS + MAX_FORWARD_DRIFT_MS + 1) << LOGICAL_BITS)
    assert clock.last == mine
    within = (START_MS + MAX_FORWARD_DRIFT_MS) << LOGICAL_BITS
    clock.observe(within)
    assert clock.last == within


def test_a_write_after_applying_a_peers_later_write_wins_everywhere() -> None:
    """B's wall clock is 10 s behind A's. B applies A's write, then writes: B's write is
    causally later, so it must win on both replicas."""
    a = KeyValueStore("00000000000000aa", now_ms=FakeClock(START_MS + 10_000))
    b = KeyValueStore("00000000000000bb", now_ms=FakeClock(START_MS))
    from_a = a.set("k", "from-a")
    b.apply(from_a)
    from_b = b.set("k", "from-b")
    a.apply(from_b)
    assert a.get("k") == b.get("k") == "from-b"
    assert from_b.entry.stamp > from_a.entry.stamp


def test_a_delete_after_applying_a_peers_later_write_wins_everywhere() -> None:
    a = KeyValueStore("00000000000000aa", now_ms=FakeClock(START_MS + 10_000))
    b = KeyValueStore("00000000000000bb", now_ms=FakeClock(START_MS))
    b.tombstone_absent_keys = a.tombstone_absent_keys = True
    b.apply(a.set("k", "from-a"))
    deleted, change = b.delete("k")
    assert deleted and change is not None
    a.apply(change)
    assert a.get("k") is None and b.get("k") is None
