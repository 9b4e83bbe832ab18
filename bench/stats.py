"""Numbers in, numbers out: percentiles, latency summaries, ratios, result files and tables.

Pure arithmetic and formatting, no processes and no NATS, so the orchestrators (which analyse
and print) and the driver (which summarises latencies) share one definition of "p50" and one
rounding. A result file is ``bench/results/<name>.json`` (``<name>-quick.json`` for a smoke
run, which git ignores), read back by ``nats-kvcache bench-report``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "ROOT",
    "finish",
    "fmt",
    "machine_info",
    "median",
    "percentile",
    "print_table",
    "ratio",
    "summarize_ms",
    "write_results",
]

#: The repository root (result paths are printed relative to it).
ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize_ms(samples_s: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    values = sorted(samples_s)
    if not values:
        return {"n": 0}
    ms = 1000.0
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * ms, 4),
        "p90_ms": round(percentile(values, 90) * ms, 4),
        "p99_ms": round(percentile(values, 99) * ms, 4),
        "max_ms": round(values[-1] * ms, 4),
        "mean_ms": round(sum(values) / len(values) * ms, 4),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to 3 decimals; None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50)


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the figures: cores, interpreter, load at the end."""
    return {
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def write_results(name: str, results: dict[str, Any], *, quick: bool, started: float) -> Path:
    """Write ``bench/results/<name>.json`` (``<name>-quick.json`` for smoke runs)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}{'-quick' if quick else ''}.json"
    document = {
        "name": name,
        "command": shlex.join([sys.executable, *sys.argv]),
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "wall_seconds": round(time.monotonic() - started, 2),
        "machine": machine_info(),
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def finish(name: str, results: dict[str, Any], *, quick: bool, started: float) -> int:
    """A benchmark's last step: write its result file, say where, return exit status 0."""
    path = write_results(name, results, quick=quick, started=started)
    print(f"\nresults: {path.relative_to(ROOT)} ({time.monotonic() - started:.1f} s)")
    return 0


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: thousands separated, small values to ``digits`` significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 1:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *([fmt(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print(f"\n{title}")
    for index, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))
