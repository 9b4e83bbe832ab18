"""What we know about the other replicas: liveness and missed messages. Pure.

Each replica numbers its change batches 1, 2, 3, ... A batch number that skips ahead means a
batch was lost on the way, and a digest that reports a later number than the last batch we got
means the most recent batches were. Either way anti-entropy should run *now* instead of waiting
for the next period. Node ids are fresh per process, so a restarted peer is simply a new peer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Peer:
    node: str
    last_seq: int = 0
    last_seen: float = 0.0
    gaps: int = 0
    #: The batch count the previous digest announced; see :meth:`PeerTracker.saw_digest`.
    announced_seq: int = 0


#: Hard cap on remembered peers. A lattice has a few instances per provider; a flood of fresh
#: node ids (forged or from restart loops) must not grow memory without bound.
MAX_PEERS = 256


class PeerTracker:
    def __init__(self, expiry_secs: float, max_peers: int = MAX_PEERS) -> None:
        self.expiry_secs = expiry_secs
        self.max_peers = max_peers
        self._peers: dict[str, Peer] = {}
        #: Real losses seen, over all peers (forgotten peers included): the ``gaps`` metric.
        self.total_gaps = 0

    def _peer(self, node: str, now: float) -> tuple[Peer, bool]:
        peer = self._peers.get(node)
        new = peer is None
        if peer is None:
            if len(self._peers) >= self.max_peers:
                self._evict(now)
            peer = self._peers[node] = Peer(node)
        peer.last_seen = now
        return peer, new

    def saw(self, node: str, now: float) -> None:
        """``node`` is alive (a presence beacon or an ack; no sequence numbers involved)."""
        self._peer(node, now)

    def saw_batch(self, node: str, seq: int, now: float) -> bool:
        """Record batch ``seq`` from ``node``; True when an anti-entropy round should run now.

        That is when batches before it were missed (a jump, counted in ``gaps``), and also
        when a peer we never heard from starts above 1: its earlier batches may have been lost
        on the way to us, and one early round costs a single digest message to find out.
        """
        peer, new = self._peer(node, now)
        gap = not new and seq > peer.last_seq + 1
        if seq > peer.last_seq:
            peer.last_seq = seq
        if gap:
            peer.gaps += 1
            self.total_gaps += 1
        return gap or (new and seq > 1)

    def saw_digest(self, node: str, seq: int, now: float) -> bool:
        """Record a digest reporting ``seq`` batches sent; True when we missed some.

        Digests and batches travel on different subjects, so a digest may be handled before
        the batch it counts, which is still on its way. A digest therefore only *announces*
        batches; they count as missed when the next digest (a heartbeat later) finds them
        still absent. That way the ``gaps`` counter and early rounds follow real losses only.
        """
        peer, new = self._peer(node, now)
        if new:  # history unknown: this is where numbering starts for us
            peer.last_seq = seq
        missed = peer.announced_seq > peer.last_seq
        if missed:
            peer.last_seq = peer.announced_seq  # counted once; repair restores the contents
            peer.gaps += 1
            self.total_gaps += 1
        peer.announced_seq = max(peer.announced_seq, seq)
        return missed

    def _evict(self, now: float) -> None:
        """Make room: drop the silent peers, else the one heard from longest ago."""
        self.live(now)
        if len(self._peers) >= self.max_peers:
            del self._peers[min(self._peers.values(), key=lambda p: p.last_seen).node]

    def forget_sequences(self) -> None:
        """After our own reconnect, sequence history says nothing about what we missed."""
        for peer in self._peers.values():
            peer.last_seq = peer.announced_seq = 0

    def live(self, now: float) -> list[Peer]:
        """Peers heard from recently; stale ones are dropped."""
        for node in [n for n, p in self._peers.items() if now - p.last_seen > self.expiry_secs]:
            del self._peers[node]
        return sorted(self._peers.values(), key=lambda p: p.node)


def differing_buckets(mine: list[int], theirs: list[int]) -> list[int]:
    return [index for index, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]
