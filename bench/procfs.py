"""CPU time from Linux's ``/proc``: per process, per machine, and a process's children.

The RPC and JetStream benchmarks report what each request costs in CPU, not only how long it
takes, because on a 2-core machine the driver, nats-server and the provider compete for the same
cores. The driver samples these counters around a load phase; the orchestrator uses
:func:`wait_child` to find the provider's verification worker. Linux only, like the benchmarks.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

__all__ = [
    "CLK_TCK",
    "child_pids",
    "cpu_delta",
    "cpu_sample",
    "cpu_seconds",
    "machine_busy_seconds",
    "wait_child",
]

#: Clock ticks per second of the ``/proc`` counters.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(stat: bytes) -> list[bytes]:
    """The fields of ``/proc/<pid>/stat`` after "pid (comm) "; comm may hold spaces."""
    return stat[stat.rindex(b")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a live process (all its threads), from ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = _stat_fields(stat)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, by scanning ``/proc/*/stat`` for their parent pid."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        if int(_stat_fields(stat)[1]) == pid:
            children.append(int(entry))
    return sorted(children)


def wait_child(pid: int, timeout: float = 10.0) -> int:
    """The first child process of ``pid`` (e.g. the provider's verification worker)."""
    deadline = time.monotonic() + timeout
    while True:
        children = child_pids(pid)
        if children:
            return children[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} started no child within {timeout}s")
        time.sleep(0.05)


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent on anything but idle/iowait since boot (``/proc/stat``)."""
    with open("/proc/stat", "rb") as handle:
        fields = [int(x) for x in handle.readline().split()[1:9]]
    # user nice system idle iowait irq softirq steal (guest time is included in user)
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def cpu_sample(pids: Mapping[str, int]) -> dict[str, float | None]:
    """:func:`cpu_seconds` of each named process (None for one that is gone)."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def cpu_delta(
    before: Mapping[str, float | None], after: Mapping[str, float | None]
) -> dict[str, float | None]:
    """CPU seconds each process spent between two samples (None if either is missing)."""
    deltas: dict[str, float | None] = {}
    for name, start in before.items():
        end = after.get(name)
        deltas[name] = None if start is None or end is None else round(end - start, 4)
    return deltas
