"""Run every benchmark, one after another (``make bench``); ``--quick`` for a smoke run.

Each benchmark is its own process and writes ``bench/results/<name>[-quick].json``. The exit
status is non-zero when a benchmark crashed; missed performance goals are reported, not failed
(the numbers depend on the machine and on whatever else it is running).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BENCHMARKS = ("rpc.py", "replication.py", "write_ack.py", "jetstream.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--only", help="comma-separated subset, e.g. 'rpc'")
    args = parser.parse_args()
    names = BENCHMARKS
    if args.only:
        wanted = {n.strip().removesuffix(".py") for n in args.only.split(",")}
        names = tuple(n for n in BENCHMARKS if n.removesuffix(".py") in wanted)
    summary = []
    for name in names:
        cmd = [sys.executable, str(BENCH / name), *(["--quick"] if args.quick else [])]
        print(f"\n=== {' '.join(cmd)}", flush=True)
        started = time.monotonic()
        code = subprocess.call(cmd)
        summary.append((name, code, time.monotonic() - started))
    print("\n=== summary")
    for name, code, seconds in summary:
        print(f"  {name:<16} {'ok' if code == 0 else f'FAILED (exit {code})':<16} {seconds:6.1f} s")
    return 0 if all(code == 0 for _, code, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
