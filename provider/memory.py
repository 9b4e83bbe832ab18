"""How much memory the store may use, and how much it uses: ``MAX_MEMORY`` and its estimate.

``MAX_MEMORY`` (a link value or a ``config_json`` key) caps the store the way Redis'
``maxmemory`` with the ``noeviction`` policy does: once the estimated use is above the limit,
every operation that would grow memory is refused with Redis' own OOM text, and reads and
deletes keep working. The value is in bytes, with Redis' suffixes (``1k`` = 1000, ``1kb`` = 1024,
``m``/``mb``, ``g``/``gb``, case-insensitive); ``0`` means no limit. The default is a quarter of
the memory available to the process: the cgroup limit when there is one, else physical memory.

The estimate is kept by the store (:mod:`provider.store.store`) incrementally, from the per-key
costs below. The constants were calibrated against the RSS growth of a fresh interpreter (the
method of ``bench/replication.py``'s memory probe): string entries with 16-byte keys and 32-byte
values cost ~354 B of RSS each, list items ~265 B, set members ~459 B; for values of 100 KB the
estimate is within 1% of the RSS growth, because a large string costs exactly its size.

Everything here is pure except :func:`read_cgroup_limit` and :func:`physical_memory`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping, Sized
from pathlib import Path

#: Redis' own reply when a write is refused for memory (``noeviction``).
OOM_TEXT = "OOM command not allowed when used memory > 'maxmemory'."

#: Health mentions memory once the estimate passes this fraction of the limit.
WARN_RATIO = 0.9

#: Per-key bookkeeping besides the key and value strings: the :class:`Entry`, its stamp and
#: its slot in the bucket dict.
ENTRY_OVERHEAD = 200
#: A list or set container: its payload object, causal context, version vector and cloud.
CONTAINER_OVERHEAD = 520
#: One version-vector node or cloud dot in a causal context.
CONTEXT_ITEM = 64
#: One list item besides its value: the ``(stamp, node, n, value)`` tuple, two ints, a slot.
LIST_ITEM_OVERHEAD = 184
#: One set member besides its value: the dict slot, the set of dots and one dot.
SET_MEMBER_OVERHEAD = 377
#: Each further dot of a set member (concurrent adds of the same member).
EXTRA_DOT = 72
#: Increment bookkeeping: the counts dict, and per node its ``(count, total)`` pair.
COUNTS_OVERHEAD = 232
COUNTS_PER_NODE = 120

_SIZE = re.compile(r"([0-9]+)\s*(b|k|kb|m|mb|g|gb)?", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}

#: cgroup v1 reports "no limit" as a huge number (the largest page-aligned 63-bit value).
_CGROUP_V1_UNLIMITED = 1 << 62

sizeof = sys.getsizeof


# ------------------------------------------------------------------ configuration
def parse_memory(text: str) -> int:
    """A Redis-style memory size in bytes: ``1048576``, ``100kb``, ``2mb``, ``1G``.

    Raises :class:`ValueError` for anything else (negative, fractional, unknown suffix).
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"MAX_MEMORY {text!r} is not a size (bytes, or with k/kb/m/mb/g/gb)")
    number, unit = match.groups()
    return int(number) * _UNITS[(unit or "").lower()]


def parse_cgroup_limit(text: str) -> int | None:
    """The contents of ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1); None = no limit."""
    text = text.strip()
    if not text or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    if value <= 0 or value >= _CGROUP_V1_UNLIMITED:
        return None
    return value


def read_cgroup_limit(root: str | Path = "/sys/fs/cgroup") -> int | None:
    """The memory limit of this process's cgroup (v2, then v1), None when there is none."""
    root = Path(root)
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text()
        except OSError:
            continue
        return parse_cgroup_limit(text)
    return None


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(cgroup: int | None, physical: int | None) -> int | None:
    """What the process may use: the smaller of its cgroup limit and physical memory."""
    known = [value for value in (cgroup, physical) if value]
    return min(known) if known else None


def default_limit(available: int | None) -> int:
    """A quarter of the available memory (0, no limit, when that is unknown)."""
    return available // 4 if available else 0


def system_default_limit() -> int:
    """The default ``MAX_MEMORY`` of this process (reads the cgroup and ``sysconf``)."""
    return default_limit(available_memory(read_cgroup_limit(), physical_memory()))


def limit_from_values(values: dict[str, str], default: int) -> tuple[int, list[str]]:
    """``MAX_MEMORY`` from normalized link values / config_json: ``(limit, problems)``.

    A bad value is a problem (the caller logs it) and the default is kept.
    """
    raw = values.get("MAX_MEMORY")
    if raw is None:
        return default, []
    try:
        return parse_memory(raw), []
    except ValueError as error:
        return default, [f"{error}; keeping {format_bytes(default)}"]


# ------------------------------------------------------------------ reporting
def format_bytes(count: int) -> str:
    if count <= 0:
        return "no limit" if count == 0 else str(count)
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def health_note(used: int, limit: int) -> str | None:
    """A warning for the health message when use is near or over the limit, else None."""
    if not limit or used <= limit * WARN_RATIO:
        return None
    percent = 100 * used / limit
    if used > limit:
        return (
            f"memory full: {format_bytes(used)} used of MAX_MEMORY {format_bytes(limit)} "
            f"({percent:.0f}%); writes that grow memory are refused"
        )
    return (
        f"memory nearly full: {format_bytes(used)} used of MAX_MEMORY "
        f"{format_bytes(limit)} ({percent:.0f}%)"
    )


# ------------------------------------------------------------------ per-key costs (pure)
def string_cost(key: str, value: str, nodes_counting: int = 0) -> int:
    """A string entry: key, value and, after Increments, the per-node counts."""
    cost = ENTRY_OVERHEAD + sizeof(key) + sizeof(value)
    if nodes_counting:
        cost += COUNTS_OVERHEAD + COUNTS_PER_NODE * nodes_counting
    return cost


def tombstone_cost(key: str) -> int:
    return ENTRY_OVERHEAD + sizeof(key)


def container_cost(key: str, context_items: int) -> int:
    """A list or set entry without its items."""
    return ENTRY_OVERHEAD + CONTAINER_OVERHEAD + sizeof(key) + CONTEXT_ITEM * context_items


def list_item_cost(value: str) -> int:
    return LIST_ITEM_OVERHEAD + sizeof(value)


def list_items_cost(values: Iterable[str], count: int) -> int:
    """``count`` list items holding ``values`` (one C-level pass, no Python loop)."""
    return LIST_ITEM_OVERHEAD * count + sum(map(sizeof, values))


def set_member_cost(value: str, dots: int = 1) -> int:
    return SET_MEMBER_OVERHEAD + sizeof(value) + EXTRA_DOT * max(dots - 1, 0)


def set_members_cost(members: Mapping[str, Sized]) -> int:
    """Every member of a set payload (C-level passes over the dict)."""
    count = len(members)
    dots = sum(map(len, members.values()))
    return SET_MEMBER_OVERHEAD * count + sum(map(sizeof, members)) + EXTRA_DOT * (dots - count)
