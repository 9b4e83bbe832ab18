"""Per-operation counters and latency samples, cheap enough for the hot path.

Recording is two dict updates and one list store. Percentiles are computed only when someone
asks (status, health, metrics scrape), from a bounded ring of recent samples per operation, so
memory stays constant however long the provider runs.
"""

from __future__ import annotations

import time
from collections import defaultdict

SAMPLES_PER_OPERATION = 1024


class Metrics:
    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self._samples: dict[str, list[float]] = {}

    def record(self, operation: str, started: float, *, error: bool = False) -> None:
        """Count one call of ``operation`` that began at ``started`` (``perf_counter``)."""
        elapsed = time.perf_counter() - started
        count = self.calls[operation]
        self.calls[operation] = count + 1
        if error:
            self.errors[operation] += 1
        ring = self._samples.get(operation)
        if ring is None:
            ring = self._samples[operation] = []
        if len(ring) < SAMPLES_PER_OPERATION:
            ring.append(elapsed)
        else:
            ring[count % SAMPLES_PER_OPERATION] = elapsed

    def percentiles(self, operation: str) -> dict[str, float]:
        """p50/p90/p99 of recent latencies in milliseconds (empty when never called)."""
        ring = sorted(self._samples.get(operation, ()))
        if not ring:
            return {}

        def pick(q: float) -> float:
            return round(ring[min(len(ring) - 1, int(q * len(ring)))] * 1000, 3)

        return {"p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99)}

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {
            operation: {"calls": calls, "errors": self.errors.get(operation, 0)}
            | self.percentiles(operation)
            for operation, calls in sorted(self.calls.items())
        }
