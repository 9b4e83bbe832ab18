"""Console script ``nats-kvcache``: argument parsing and dispatch to one subcommand module.

Each subcommand module contributes its own parser (``add_parser``) and a ``run(args) -> int``,
so adding a command never touches the others. Exit codes are the subcommand's; argparse's own
usage errors exit 2, the same code as a missing setting.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from provider.cli import bench_report, call, dev, health, par, status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nats-kvcache",
        description="Operate the nats-kvcache wasmcloud:keyvalue provider.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    call.add_parser(subparsers)
    dev.add_parser(subparsers)
    health.add_parser(subparsers)
    status.add_parser(subparsers)
    par.add_parser(subparsers)
    bench_report.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
