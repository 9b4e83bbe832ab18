"""Which actors are linked to this provider instance.

Links are tracked per actor id only: the NATS subject already fixes the provider key and link
name (spec §8.2). Hosts re-publish every link they know, so duplicates are normal and ignored,
*even when the values differ*: the first link an actor got is the one in force until it is
deleted.
"""

from __future__ import annotations

from contract.wire import LinkDefinition


class LinkRegistry:
    __slots__ = ("_links",)

    def __init__(self) -> None:
        self._links: dict[str, LinkDefinition] = {}

    def __contains__(self, actor_id: str) -> bool:
        return actor_id in self._links

    def __len__(self) -> int:
        return len(self._links)

    def add(self, link: LinkDefinition) -> bool:
        """Record ``link``; False when the actor already had one (a duplicate)."""
        if link.actor_id in self._links:
            return False
        self._links[link.actor_id] = link
        return True

    def remove(self, actor_id: str) -> LinkDefinition | None:
        return self._links.pop(actor_id, None)
