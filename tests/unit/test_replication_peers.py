"""provider.replication.peers: liveness of other replicas and detection of missed batches."""

from __future__ import annotations

import pytest

from provider.replication.peers import Peer, PeerTracker, differing_buckets


def peer(tracker: PeerTracker, node: str, now: float = 0.0) -> Peer:
    (found,) = [p for p in tracker.live(now) if p.node == node]
    return found


def test_first_batch_from_a_new_peer_asks_for_a_round_but_is_no_counted_gap() -> None:
    tracker = PeerTracker(expiry_secs=10)
    assert tracker.saw_batch("a", 1, now=0) is False  # its history starts here: nothing missed
    # Starting above 1, its earlier batches may have been lost on the way: check once.
    assert tracker.saw_batch("b", 57, now=0) is True
    assert peer(tracker, "b").last_seq == 57
    assert peer(tracker, "b").gaps == 0


def test_consecutive_batches_are_no_gap() -> None:
    tracker = PeerTracker(expiry_secs=10)
    assert [tracker.saw_batch("a", seq, now=0) for seq in range(1, 6)] == [False] * 5
    assert peer(tracker, "a").last_seq == 5


def test_sequence_jump_is_a_gap() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=0)
    assert tracker.saw_batch("a", 3, now=1) is True
    assert peer(tracker, "a", 1).last_seq == 3
    assert peer(tracker, "a", 1).gaps == 1
    assert tracker.saw_batch("a", 4, now=2) is False
    assert tracker.saw_batch("a", 10, now=3) is True
    assert peer(tracker, "a", 3).gaps == 2


def test_duplicates_and_older_batches_are_no_gap() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 5, now=0)
    assert tracker.saw_batch("a", 5, now=0) is False  # duplicate
    assert tracker.saw_batch("a", 2, now=0) is False  # late, out of order
    assert peer(tracker, "a").last_seq == 5  # never moves back
    assert tracker.saw_batch("a", 6, now=0) is False
    assert peer(tracker, "a").gaps == 0


def test_peers_are_tracked_separately() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=0)
    assert tracker.saw_batch("b", 9, now=0) is True  # new peer, history unknown: one round
    assert tracker.saw_batch("a", 2, now=0) is False
    assert tracker.saw_batch("b", 11, now=0) is True
    assert [(p.node, p.last_seq, p.gaps) for p in tracker.live(0)] == [("a", 2, 0), ("b", 11, 1)]


def test_digest_reporting_a_later_sequence_is_a_gap_once_the_next_digest_confirms_it() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 4, now=0)
    assert tracker.saw_digest("a", 4, now=1) is False  # we have everything
    assert tracker.saw_digest("a", 3, now=1) is False  # an older digest
    assert tracker.saw_digest("a", 6, now=2) is False  # 5 and 6 may still be on their way
    assert tracker.saw_digest("a", 6, now=3) is True  # a heartbeat later: they never came
    assert peer(tracker, "a", 3).last_seq == 6
    assert peer(tracker, "a", 3).gaps == 1
    assert tracker.saw_digest("a", 6, now=4) is False  # reported once, not again
    assert tracker.saw_batch("a", 7, now=5) is False  # and the next batch follows on


def test_digest_handled_before_its_batch_is_no_gap() -> None:
    """Under load the digest announcing batch N is often handled before batch N itself."""
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=0)
    for seq in range(2, 50):
        assert tracker.saw_digest("a", seq, now=seq) is False
        assert tracker.saw_batch("a", seq, now=seq) is False
    assert tracker.saw_digest("a", 49, now=60) is False
    assert peer(tracker, "a", 60).gaps == 0


def test_a_batch_lost_after_its_digest_is_counted_once() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=0)
    assert tracker.saw_digest("a", 2, now=1) is False
    assert tracker.saw_digest("a", 2, now=2) is True  # batch 2 was lost
    assert tracker.saw_batch("a", 2, now=3) is False  # a late copy is no second gap
    assert tracker.saw_batch("a", 3, now=3) is False
    assert peer(tracker, "a", 3).gaps == 1


def test_first_digest_from_a_new_peer_is_no_gap() -> None:
    tracker = PeerTracker(expiry_secs=10)
    assert tracker.saw_digest("a", 100, now=0) is False
    assert tracker.saw_batch("a", 101, now=0) is False
    assert tracker.saw_digest("a", 0, now=0) is False  # a peer that has sent nothing yet


def test_forget_sequences() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 10, now=0)
    tracker.saw_batch("b", 20, now=0)
    tracker.forget_sequences()
    assert [p.last_seq for p in tracker.live(0)] == [0, 0]
    # peers stay known, so a jump is still a gap from the reset point ...
    assert tracker.saw_batch("a", 11, now=1) is True
    # ... and the next ones follow on
    assert tracker.saw_batch("a", 12, now=1) is False
    assert tracker.saw_batch("b", 1, now=1) is False
    assert tracker.saw_digest("b", 1, now=1) is False


def test_live_expiry() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=0)
    tracker.saw_digest("b", 1, now=5)
    assert [p.node for p in tracker.live(now=10)] == ["a", "b"]  # exactly at the expiry: kept
    assert [p.node for p in tracker.live(now=10.5)] == ["b"]
    assert [p.node for p in tracker.live(now=14)] == ["b"]
    tracker.saw_batch("b", 2, now=14)  # hearing from a peer keeps it alive
    assert [p.node for p in tracker.live(now=24)] == ["b"]
    assert tracker.live(now=100) == []


def test_an_expired_peer_returns_as_new() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=0)
    assert tracker.live(now=20) == []
    assert tracker.saw_batch("a", 50, now=21) is True  # a new peer starting above 1
    assert peer(tracker, "a", 21).gaps == 0


def test_last_seen_is_updated() -> None:
    tracker = PeerTracker(expiry_secs=10)
    tracker.saw_batch("a", 1, now=3)
    assert peer(tracker, "a", 3).last_seen == 3
    tracker.saw_digest("a", 1, now=7)
    assert peer(tracker, "a", 7).last_seen == 7


def test_live_is_sorted_by_node() -> None:
    tracker = PeerTracker(expiry_secs=10)
    for node in ("c", "a", "b"):
        tracker.saw_batch(node, 1, now=0)
    assert [p.node for p in tracker.live(0)] == ["a", "b", "c"]


def test_differing_buckets() -> None:
    assert differing_buckets([], []) == []
    assert differing_buckets([1, 2, 3], [1, 2, 3]) == []
    assert differing_buckets([1, 2, 3, 4], [1, 0, 3, 5]) == [1, 3]
    mine = list(range(1024))
    theirs = [*mine]
    theirs[0], theirs[1023] = -1, -1
    assert differing_buckets(mine, theirs) == [0, 1023]


def test_differing_buckets_needs_equal_lengths() -> None:
    with pytest.raises(ValueError):
        differing_buckets([1, 2], [1])


def test_total_gaps_counts_real_losses_only() -> None:
    """A new peer first heard above batch 1 earns an early round, not a gap in the metric."""
    tracker = PeerTracker(expiry_secs=10)
    assert tracker.saw_batch("a", 57, now=0) is True
    assert tracker.total_gaps == 0
    tracker.saw_batch("a", 59, now=1)
    tracker.saw_digest("a", 61, now=2)
    tracker.saw_digest("a", 61, now=3)
    assert tracker.total_gaps == 2


def test_the_peer_table_is_capped() -> None:
    """A flood of fresh node ids evicts the longest-silent peers instead of growing memory."""
    tracker = PeerTracker(expiry_secs=1000, max_peers=8)
    tracker.saw_batch("real", 1, now=0)
    for index in range(1, 5000):
        tracker.saw_batch(f"forged-{index}", 1, now=index / 1000)
        tracker.saw_batch("real", index + 1, now=index / 1000)  # the real peer keeps talking
    live = tracker.live(now=5)
    assert len(live) == 8
    assert "real" in [p.node for p in live]
    assert peer(tracker, "real", 5).last_seq == 5000
