"""Causal contexts: which list items and set tags a replica has already seen.

Lists and sets are *dot stores* (the delta-CRDT design of Almeida, Shoker and Baquero). Every
element a replica adds gets a *dot* ``(node, n)``: the adding node's id and a per-node counter.
A replica remembers the dots it has seen in a causal context. Merging two states then needs no
history: an element present on one side and absent on the other was *removed* if the other side's
context has seen its dot, and is *new* otherwise. That is what makes removal "of observed elements
only" and lets concurrent adds win.

The context is a version vector (``node -> highest contiguous counter``) plus a small *cloud* of
dots seen out of order, which happens when a delta arrives before an earlier one that was lost.
Anti-entropy fills the gaps, and :meth:`CausalContext.compact` folds the cloud back into the
vector.
"""

from __future__ import annotations

Dot = tuple[str, int]


class CausalContext:
    """A set of dots, stored compactly as a version vector plus out-of-order extras."""

    __slots__ = ("cloud", "vv")

    def __init__(self, vv: dict[str, int] | None = None, cloud: set[Dot] | None = None) -> None:
        self.vv: dict[str, int] = vv if vv is not None else {}
        self.cloud: set[Dot] = cloud if cloud is not None else set()

    def __contains__(self, dot: Dot) -> bool:
        node, n = dot
        return n <= self.vv.get(node, 0) or dot in self.cloud

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CausalContext) and self.vv == other.vv and self.cloud == other.cloud
        )

    def __repr__(self) -> str:
        return f"CausalContext(vv={self.vv!r}, cloud={sorted(self.cloud)!r})"

    def next_dot(self, node: str) -> Dot:
        """Mint the next dot for ``node`` and record it as seen.

        A node only mints dots for itself, and every dot it mints is in its own context, so its
        own entry in the vector is always contiguous.
        """
        dot = (node, self.vv.get(node, 0) + 1)
        self.vv[node] = dot[1]
        return dot

    def add(self, dot: Dot) -> None:
        if dot not in self:
            self.cloud.add(dot)
            self.compact()

    def join(self, other: CausalContext) -> None:
        """Union in place."""
        vv = self.vv
        for node, n in other.vv.items():
            if n > vv.get(node, 0):
                vv[node] = n
        if other.cloud:
            self.cloud |= other.cloud
        if self.cloud:
            self.compact()

    def compact(self) -> None:
        """Move cloud dots that extend the vector contiguously into it; drop covered ones.

        O(n log n) in the cloud's size: one sort, then one pass per node. (Moving one dot per
        pass over the whole cloud was quadratic: 25,000 out-of-order dots from one peer held
        the event loop for tens of seconds.)
        """
        if not self.cloud:
            return
        vv = self.vv
        by_node: dict[str, list[int]] = {}
        for node, n in self.cloud:
            by_node.setdefault(node, []).append(n)
        remaining: set[Dot] = set()
        for node, numbers in by_node.items():
            numbers.sort()
            have = vv.get(node, 0)
            for index, n in enumerate(numbers):
                if n <= have:
                    continue
                if n == have + 1:
                    have = n
                    continue
                remaining.update((node, rest) for rest in numbers[index:])
                break
            if have:
                vv[node] = have
        self.cloud = remaining

    def copy(self) -> CausalContext:
        return CausalContext(dict(self.vv), set(self.cloud))

    @classmethod
    def of(cls, dots: list[Dot] | set[Dot]) -> CausalContext:
        """A context holding exactly ``dots`` (used for deltas)."""
        ctx = cls(cloud=set(dots))
        ctx.compact()
        return ctx
