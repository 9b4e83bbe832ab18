"""``nats-kvcache bench-report``: render benchmark result files as PNG bar charts.

Reads every ``*.json`` in ``--results`` (default ``bench/results``) and writes charts plus an
``index.md`` that shows them into ``--out`` (default ``docs/bench``). Needs matplotlib (the
``report`` extra: ``pip install '.[report]'``).

The reader is deliberately tolerant, because benchmark scripts grow new fields all the time:

* a file written by ``bench/`` is ``{"name", "timestamp", "quick", "machine",
  "results": {section: ...}}``; any other JSON object is read as one with its non-metadata keys
  as sections, and a bare list as a single section of rows;
* inside a section, every number (not a bool) is a measurement named by its key, labelled by the
  path of objects above it; objects in a list are labelled by an identifying field (``name``,
  ``label``, ``mode``, ``inflight``…) or their position; lists of numbers are labelled ``[i]``;
* the unit is read from the metric name (``*_ms`` latency, ``rps``/``*_per_sec`` throughput,
  ``*seconds``/``*_s`` durations, ``*bytes*``, ``*ratio*``). Plain counts (requests, keys,
  errors) and clock readings (``t_start``…) are not charted: they stay in the JSON.

One chart per (file, section, unit): horizontal bars grouped by label, one colour per metric,
a log scale when values span more than two decades.

Exit codes: 0 charts written, 1 no usable results, 2 matplotlib missing or bad usage.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RESULTS = Path("bench") / "results"
DEFAULT_OUT = Path("docs") / "bench"
EXIT_OK, EXIT_NO_RESULTS, EXIT_USAGE = 0, 1, 2

#: Top-level keys that describe a run rather than measure something.
METADATA_KEYS = frozenset({"name", "command", "timestamp", "quick", "wall_seconds", "machine"})
#: Fields that name a row of a list, in order of preference.
IDENTITY_KEYS = ("name", "label", "mode", "kind", "inflight", "keys", "size", "id")
#: Bars per chart; a bigger group is split into numbered parts (a chart taller than a screen
#: is not read). A single label with more metrics than this is cut (never seen in practice).
MAX_BARS = 40

UNITS = {
    "ms": "latency (ms)",
    "us": "time (µs)",
    "per_s": "throughput (per second)",
    "s": "duration (s)",
    "bytes": "bytes",
    "ratio": "ratio",
}


@dataclass(frozen=True, slots=True)
class Measurement:
    label: str  # where in the section: "inflight=1 / get"; "" for the section itself
    metric: str  # the key: "p50_ms"
    value: float
    unit: str | None = None  # a key of UNITS; None: not charted


@dataclass(slots=True)
class BenchFile:
    path: Path
    name: str
    description: str  # "quick run, 2026-11-22T00:22:05+00:00, 2 CPUs, Python 3.11.7"
    sections: dict[str, list[Measurement]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Chart:
    path: Path
    bench: str
    section: str
    unit: str
    bars: int


# ------------------------------------------------------------------------------ reading
def unit_of(metric: str) -> str | None:
    """The unit key for a metric name, or None when it is not charted."""
    m = re.sub(r"\[\d+\]$", "", metric.lower())  # "msgs_per_sec[0]": an element of a list
    if m in ("t", "n") or m.startswith("t_"):
        return None  # clock readings (t_start, t_end...) and sample counts
    if "ratio" in m:
        return "ratio"
    if m.endswith("_ms") or "_ms_" in m or m == "ms":
        return "ms"
    if m.startswith("us_") or m.endswith("_us") or "_us_" in m:
        return "us"
    if m == "rps" or m.endswith(("_rps", "per_sec", "per_s", "_per_second")) or "_rps_" in m:
        return "per_s"
    if m.startswith("rate_"):
        return "per_s"
    if "bytes" in m:
        return "bytes"
    if m.endswith(("seconds", "_secs", "_s", "_s_upper")) or m == "s":
        return "s"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _row_label(item: dict[str, Any], index: int) -> str:
    for key in IDENTITY_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value:
            return value if key in ("name", "label") else f"{key}={value}"
        if _is_number(value):
            return f"{key}={value:g}"
    return f"#{index}"


def flatten(obj: Any, path: tuple[str, ...] = ()) -> Iterator[Measurement]:
    """Every number below ``obj`` as a Measurement labelled by the path above it."""
    label = " / ".join(path)
    if isinstance(obj, dict):
        for key, value in obj.items():
            key = str(key)
            if _is_number(value):
                # "to_b:changes" under "dropped_bytes": the parent's name gives the unit
                unit = unit_of(key) or (unit_of(path[-1]) if path else None)
                yield Measurement(label, key, float(value), unit)
            elif isinstance(value, dict):
                yield from flatten(value, (*path, key))
            elif isinstance(value, list):
                yield from _flatten_list(value, path, key)
    elif isinstance(obj, list):
        yield from _flatten_list(obj, path[:-1], path[-1] if path else "")


def _flatten_list(items: list[Any], path: tuple[str, ...], key: str) -> Iterator[Measurement]:
    label = " / ".join(path)
    for index, item in enumerate(items):
        if _is_number(item):
            yield Measurement(label, f"{key}[{index}]", float(item), unit_of(key))
        elif isinstance(item, dict):
            yield from flatten(item, (*path, _row_label(item, index)))
        elif isinstance(item, list):
            yield from _flatten_list(item, (*path, f"{key}[{index}]"), key)


def _describe(document: dict[str, Any]) -> str:
    parts = []
    if document.get("quick"):
        parts.append("quick run")
    if isinstance(document.get("timestamp"), str):
        parts.append(document["timestamp"])
    machine = document.get("machine")
    if isinstance(machine, dict):
        if _is_number(machine.get("nproc")):
            parts.append(f"{machine['nproc']:g} CPUs")
        if isinstance(machine.get("python"), str):
            parts.append(f"Python {machine['python']}")
    return ", ".join(parts)


def read_file(path: Path) -> BenchFile | None:
    """One results file, or None when it is not JSON or has nothing chartable."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if isinstance(document, list):
        document = {"results": {"rows": document}}
    if not isinstance(document, dict):
        return None
    results = document.get("results")
    if not isinstance(results, dict | list):
        results = {k: v for k, v in document.items() if k not in METADATA_KEYS}
    if isinstance(results, list):
        results = {"rows": results}
    named = document.get("name")
    name = named if isinstance(named, str) else path.stem
    bench = BenchFile(path, name, _describe(document))
    # Top-level numbers are collected into one "summary" section instead of one-bar charts.
    summary = [
        Measurement("", str(k), float(v), unit_of(str(k)))
        for k, v in results.items()
        if _is_number(v)
    ]
    for section, value in [("summary", None), *results.items()]:
        if section == "summary" and value is None:
            found = summary
        elif isinstance(value, dict):
            found = list(flatten(value))
        elif isinstance(value, list):
            found = list(_flatten_list(value, (), str(section)))
        else:
            continue
        charted = [m for m in found if m.unit is not None]
        if charted:
            bench.sections[str(section)] = charted
    return bench if bench.sections else None


def read_results(results_dir: Path) -> list[BenchFile]:
    return [b for p in sorted(results_dir.glob("*.json")) if (b := read_file(p)) is not None]


# ------------------------------------------------------------------------------ drawing
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def draw(
    path: Path,
    title: str,
    subtitle: str,
    unit: str,
    measurements: list[Measurement],
    section: str = "",
) -> int:
    """One grouped horizontal bar chart; returns how many bars it has."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labels = list(dict.fromkeys(m.label for m in measurements))
    metrics = list(dict.fromkeys(m.metric for m in measurements))
    values = {(m.label, m.metric): m.value for m in measurements}
    bars = [(lab, met) for lab in labels for met in metrics if (lab, met) in values]
    dropped = max(0, len(bars) - MAX_BARS)
    bars = bars[:MAX_BARS]
    labels = [lab for lab in labels if any(b[0] == lab for b in bars)]
    metrics = [met for met in metrics if any(b[1] == met for b in bars)]

    # Each label gets one row per metric it has, so groups stay compact and aligned.
    rows_per_label = {lab: [met for met in metrics if (lab, met) in values and (lab, met) in bars]
                      for lab in labels}  # fmt: skip
    height = 1.6 + 0.32 * len(bars) + 0.25 * len(labels)
    fig = Figure(figsize=(10, max(3.0, height)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    colours = {met: f"C{i % 10}" for i, met in enumerate(metrics)}
    y = 0.0
    ticks, tick_labels = [], []
    positive = [values[b] for b in bars if values[b] > 0]
    for lab in labels:
        group = rows_per_label[lab]
        start = y
        for met in group:
            value = values[(lab, met)]
            ax.barh(y, value, height=0.8, color=colours[met])
            ax.annotate(
                _fmt(value),
                (value, y),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
            y += 1
        ticks.append((start + y - 1) / 2)
        tick_labels.append(lab or section or "(all)")
        y += 0.6  # gap between groups
    ax.set_yticks(ticks, tick_labels, fontsize=9)
    ax.invert_yaxis()
    if positive and max(positive) / min(positive) > 100 and len(positive) == len(bars):
        ax.set_xscale("log")
    ax.set_xlabel(UNITS[unit])
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=colours[m], label=m) for m in metrics]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    heading = title + (f"  (+{dropped} bars not shown)" if dropped else "")
    fig.suptitle(heading, fontsize=12, x=0.01, ha="left")
    if subtitle:
        ax.set_title(subtitle, fontsize=8, loc="left", color="0.35")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return len(bars)


def render(benches: list[BenchFile], out_dir: Path) -> list[Chart]:
    charts: list[Chart] = []
    for bench in benches:
        for section, measurements in bench.sections.items():
            by_unit: dict[str, list[Measurement]] = {}
            for m in measurements:
                by_unit.setdefault(m.unit or "", []).append(m)
            for unit, group in by_unit.items():
                parts = _split(group)
                for number, part in enumerate(parts, start=1):
                    suffix = f"-{number}" if len(parts) > 1 else ""
                    name = f"{_slug(bench.path.stem)}--{_slug(section)}--{unit}{suffix}.png"
                    title = f"{bench.path.stem}: {section} — {UNITS[unit]}"
                    if len(parts) > 1:
                        title += f" ({number}/{len(parts)})"
                    count = draw(out_dir / name, title, bench.description, unit, part, section)
                    charts.append(Chart(out_dir / name, bench.path.stem, section, unit, count))
    return charts


def _split(measurements: list[Measurement]) -> list[list[Measurement]]:
    """Consecutive labels packed into parts of at most MAX_BARS bars (labels never split)."""
    by_label: dict[str, list[Measurement]] = {}
    for m in measurements:
        by_label.setdefault(m.label, []).append(m)
    parts: list[list[Measurement]] = [[]]
    for rows in by_label.values():
        if parts[-1] and len(parts[-1]) + len(rows) > MAX_BARS:
            parts.append([])
        parts[-1].extend(rows)
    return parts


def write_index(out_dir: Path, benches: list[BenchFile], charts: list[Chart]) -> Path:
    lines = [
        "# Benchmark charts",
        "",
        "Generated by `nats-kvcache bench-report` from `bench/results/*.json`; regenerate "
        "instead of editing. The JSON files hold every number, including the ones not charted.",
    ]
    for bench in benches:
        stem = bench.path.stem
        lines += ["", f"## {stem}", ""]
        if bench.description:
            lines += [f"_{bench.description}_", ""]
        for chart in (c for c in charts if c.bench == stem):
            lines.append(f"![{stem} {chart.section} {chart.unit}]({chart.path.name})")
    index = out_dir / "index.md"
    index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return index


# ------------------------------------------------------------------------------ CLI
def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench-report",
        help="render bench/results/*.json as PNG charts",
        description="Render benchmark result files as PNG bar charts plus an index.md.",
    )
    parser.add_argument(
        "--results", default=str(DEFAULT_RESULTS), help=f"results dir (default {DEFAULT_RESULTS})"
    )
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help=f"output dir (default {DEFAULT_OUT})"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "nats-kvcache bench-report: matplotlib is not installed: pip install -e '.[report]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    results_dir, out_dir = Path(args.results), Path(args.out)
    if not results_dir.is_dir():
        print(f"nats-kvcache bench-report: no results dir {results_dir}", file=sys.stderr)
        return EXIT_NO_RESULTS
    benches = read_results(results_dir)
    if not benches:
        print(f"nats-kvcache bench-report: no usable *.json in {results_dir}", file=sys.stderr)
        return EXIT_NO_RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = render(benches, out_dir)
    index = write_index(out_dir, benches, charts)
    for chart in charts:
        print(chart.path)
    print(f"{len(charts)} charts from {len(benches)} result files; see {index}")
    return EXIT_OK
