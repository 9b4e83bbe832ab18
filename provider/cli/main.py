"""Console script ``nats-kvcache``: argument parsing and dispatch to one subcommand module.

Each subcommand module contributes its own parser (``add_parser``) and a ``run(args) -> int``,
so adding a command never touches the others. Exit codes are the same for every subcommand (see
:mod:`provider.cli.common`); argparse's own usage errors exit 2, the same code as a missing
setting, and print the usage of the subcommand that was given, not the top level's.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from provider import __version__
from provider.cli import bench_report, call, dev, health, instance, par, status
from provider.cli.common import DEBUG_ENV, EXIT_FAILED, EXIT_INTERRUPTED, error


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser by name."""
    parser = argparse.ArgumentParser(
        prog="nats-kvcache",
        description="Operate the nats-kvcache wasmcloud:keyvalue provider.",
        epilog="Exit codes: 0 ok, 1 failed or negative answer, 2 usage or settings,"
        " 3 NATS or provider unreachable, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"nats-kvcache {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}
    for module in (call, dev, instance, health, status, par, bench_report):
        before = set(subparsers.choices)
        module.add_parser(subparsers)
        for name in set(subparsers.choices) - before:
            commands[name] = subparsers.choices[name]
    return parser, commands


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser, commands = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report it with the subcommand's usage, as `git`/`docker compose` do
        sub = commands.get(args.command, parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nats-kvcache call ... | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush is quiet
        return EXIT_FAILED
    except Exception as failure:  # no tracebacks for users; one line and where to get more
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        reason = str(failure) or type(failure).__name__
        error(
            args.command,
            f"unexpected error: {reason} (set {DEBUG_ENV}=1 for details; please report it)",
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
