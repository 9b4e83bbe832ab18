"""``nats-kvcache call OP ARGS...``: run one KeyValue operation against a running provider.

The call goes through :class:`contract.client.KeyValueClient`, i.e. a signed invocation exactly
like the OTP host sends, so a command that works here works for a real actor too. Settings not
given as flags come from the dev lattice state file (see :mod:`provider.cli.state`).

Exit codes: 0 success (a missing key prints ``(nil)`` and still exits 0: "not found" is a
normal answer of ``Get``, not a failure), 1 the provider answered with an error, 2 bad usage or
missing settings, 3 the provider could not be reached (no NATS, no responders, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors

from contract.client import KeyValueClient, KeyValueError
from contract.keyvalue import (
    OPERATIONS,
    ArgumentError,
    IncrementRequest,
    ListAddRequest,
    ListDelRequest,
    ListRangeRequest,
    SetAddRequest,
    SetDelRequest,
    SetRequest,
)
from contract.nkeys import KeyPair, NKeyError
from provider.cli import state as statefile
from provider.logs import redact_url

SEED_ENV = "NATS_KVCACHE_SEED"
DEFAULT_TIMEOUT = 2.0

EXIT_OK, EXIT_ERROR_REPLY, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    """Bad arguments or missing settings (exit code 2)."""


class Unreachable(Exception):
    """No answer from NATS or from the provider (exit code 3)."""


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{what} must be an integer, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class Command:
    """A friendly operation: contract method, argument names (usage text) and argument builder."""

    name: str
    method: str
    params: str
    build: Callable[[list[str], int], Any]  # (positional args, --expires) → contract argument
    arity: int  # number of positional args; -1 = one or more


def _one(args: list[str], _: int) -> str:
    return args[0]


def _delta(args: list[str]) -> int:
    return _int(args[1], "DELTA")


COMMANDS: tuple[Command, ...] = (
    Command("get", "Get", "KEY", _one, 1),
    Command("set", "Set", "KEY VALUE [--expires N]", lambda a, e: SetRequest(a[0], a[1], e), 2),
    Command("del", "Del", "KEY", _one, 1),
    Command("contains", "Contains", "KEY", _one, 1),
    Command("incr", "Increment", "KEY DELTA", lambda a, _: IncrementRequest(a[0], _delta(a)), 2),
    Command("list-add", "ListAdd", "NAME VALUE", lambda a, _: ListAddRequest(a[0], a[1]), 2),
    Command("list-del", "ListDel", "NAME VALUE", lambda a, _: ListDelRequest(a[0], a[1]), 2),
    Command("list-clear", "ListClear", "NAME", _one, 1),
    Command(
        "list-range",
        "ListRange",
        "NAME START STOP",
        lambda a, _: ListRangeRequest(a[0], _int(a[1], "START"), _int(a[2], "STOP")),
        3,
    ),
    Command("set-add", "SetAdd", "NAME VALUE", lambda a, _: SetAddRequest(a[0], a[1]), 2),
    Command("set-del", "SetDel", "NAME VALUE", lambda a, _: SetDelRequest(a[0], a[1]), 2),
    Command("set-query", "SetQuery", "NAME", _one, 1),
    Command("set-union", "SetUnion", "NAME...", lambda a, _: list(a), -1),
    Command("set-intersection", "SetIntersection", "NAME...", lambda a, _: list(a), -1),
    Command("set-clear", "SetClear", "NAME", _one, 1),
)


def _normalize(op: str) -> str:
    op = op.lower().removeprefix("keyvalue.")
    return op.replace("-", "").replace("_", "")


# Friendly names, contract method names (ListAdd, KeyValue.ListAdd) and two short aliases all
# normalise to the same key, so any spelling an operator is likely to type works.
_BY_NAME: dict[str, Command] = {}
for _cmd in COMMANDS:
    _BY_NAME[_normalize(_cmd.name)] = _cmd
    _BY_NAME[_normalize(_cmd.method)] = _cmd
_BY_NAME["delete"] = _BY_NAME["del"]
_BY_NAME["increment"] = _BY_NAME["incr"]


def find_command(op: str) -> Command:
    command = _BY_NAME.get(_normalize(op))
    if command is None:
        names = ", ".join(c.name for c in COMMANDS)
        raise UsageError(f"unknown operation {op!r} (one of: {names})")
    return command


def build_argument(command: Command, args: list[str], expires: int | None) -> Any:
    """Check the arity and turn the command-line strings into the contract argument."""
    arity_ok = len(args) >= 1 if command.arity < 0 else len(args) == command.arity
    if not arity_ok:
        raise UsageError(f"usage: nats-kvcache call {command.name} {command.params}")
    if expires is not None and command.name != "set":
        raise UsageError("--expires only applies to set")
    if expires is not None and expires < 0:
        raise UsageError("--expires must be >= 0 (seconds; 0 = never)")
    argument = command.build(args, expires or 0)
    operation = OPERATIONS[command.method]
    try:  # round-trip locally so range errors (DELTA > i32) are usage errors, not replies
        operation.decode_input(operation.encode_input(argument))
    except ArgumentError as error:
        raise UsageError(f"invalid argument: {error}") from None
    return argument


def format_result(method: str, result: Any) -> str:
    """Plain text for a terminal: values as-is, lists one item per line."""
    output_type = OPERATIONS[method].output_type
    if output_type == "GetResponse":
        return result.value if result.exists else "(nil)"
    if output_type == "Unit":
        return "OK"
    if output_type == "Boolean":
        return "true" if result else "false"
    if output_type == "StringList":
        return "\n".join(result) if result else "(empty list)"
    return str(result)


@dataclass(slots=True)
class Connection:
    nats_url: str
    lattice: str
    provider_key: str
    link_name: str
    actor: str
    signer: KeyPair
    timeout: float


def resolve_connection(args: argparse.Namespace) -> Connection:
    """Flags first, then (seed only) ``$NATS_KVCACHE_SEED``, then the state file, then defaults."""
    path, explicit = statefile.resolve_path(args.state)
    try:
        saved = statefile.load(path, required=explicit)
    except statefile.StateError as error:
        raise UsageError(str(error)) from None
    nats_url = args.nats_url or saved.nats_url or "nats://127.0.0.1:4222"
    if "://" not in nats_url:
        nats_url = f"nats://{nats_url}"  # accept the host's scheme-less host:port form
    values = {
        "provider_key": args.provider_key or saved.provider_key,
        "actor": args.actor or saved.actor,
        "seed": args.seed or os.environ.get(SEED_ENV) or saved.seed,
    }
    missing = [f"--{name.replace('_', '-')}" for name, value in values.items() if not value]
    if missing:
        hint = "" if path.exists() else f" (no state file at {path}: start `nats-kvcache dev`?)"
        raise UsageError(f"missing required setting(s): {', '.join(missing)}{hint}")
    try:
        signer = KeyPair.from_seed(values["seed"])
    except NKeyError as error:  # NKeyError texts never include the seed itself
        raise UsageError(f"--seed: {error}") from None
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    return Connection(
        nats_url=nats_url,
        lattice=args.lattice or saved.lattice or "default",
        provider_key=values["provider_key"],
        link_name=args.link_name or saved.link_name or "default",
        actor=values["actor"],
        signer=signer,
        timeout=args.timeout or DEFAULT_TIMEOUT,
    )


async def _quiet(_: Exception) -> None:
    """nats-py's default error callback logs tracebacks; the exit code says it all here."""


async def invoke(conn: Connection, method: str, argument: Any) -> Any:
    try:
        nc = await nats.connect(
            conn.nats_url,
            name="nats-kvcache call",
            connect_timeout=min(conn.timeout, 5.0),
            allow_reconnect=False,
            max_reconnect_attempts=1,  # 0 would retry forever (nats-py quirk)
            reconnect_time_wait=0.1,
            error_cb=_quiet,
        )
    except Exception as error:
        reason = str(error) or type(error).__name__
        raise Unreachable(
            f"cannot connect to NATS at {redact_url(conn.nats_url)}: {reason}"
        ) from None
    client = KeyValueClient(
        nc,
        lattice_prefix=conn.lattice,
        provider_key=conn.provider_key,
        link_name=conn.link_name,
        signer=conn.signer,
        actor_key=conn.actor,
        timeout=conn.timeout,
    )
    try:
        return await client.call(method, argument)
    except nats.errors.NoRespondersError:
        raise Unreachable(f"no provider is listening on {client.subject}") from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise Unreachable(
            f"timed out after {conn.timeout:g}s waiting for the provider on {client.subject}"
        ) from None
    finally:
        await nc.close()


def add_parser(subparsers: Any) -> None:
    ops = ", ".join(f"{c.name} {c.params}" for c in COMMANDS)
    parser = subparsers.add_parser(
        "call",
        help="invoke one KeyValue operation on a running provider",
        description=f"Operations: {ops}. Values starting with '-' go after '--'.",
        epilog="Output: values plainly, lists one item per line or '(empty list)', a missing key"
        " '(nil)' (exit 0). Exit codes: 1 error reply, 2 usage/settings, 3 provider unreachable.",
    )
    parser.add_argument("op", help="operation, e.g. get, set, list-add (or ListAdd)")
    parser.add_argument("args", nargs="*", help="operation arguments")
    parser.add_argument("--expires", type=int, metavar="N", help="set: expire after N seconds")
    parser.add_argument(
        "--nats-url", help="NATS server (default: state file, else nats://127.0.0.1:4222)"
    )
    parser.add_argument("--lattice", help="lattice prefix (default: state file, else 'default')")
    parser.add_argument("--provider-key", help="provider public key V...")
    parser.add_argument("--link-name", help="link name (default: state file, else 'default')")
    parser.add_argument(
        "--seed", help=f"seed of a trusted cluster issuer (or ${SEED_ENV}); never printed"
    )
    parser.add_argument("--actor", help="public key M... of a linked actor")
    parser.add_argument("--timeout", type=float, help=f"seconds (default {DEFAULT_TIMEOUT:g})")
    default_state = f"${statefile.STATE_ENV} or {statefile.DEFAULT_STATE_PATH}"
    parser.add_argument("--state", help=f"state file (default {default_state})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        command = find_command(args.op)
        argument = build_argument(command, args.args, args.expires)
        conn = resolve_connection(args)
        result = asyncio.run(invoke(conn, command.method, argument))
    except UsageError as error:
        print(f"nats-kvcache call: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ArgumentError as error:  # the reply did not decode as the operation's result
        print(f"error: undecodable reply: {error}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    except Unreachable as error:
        print(f"nats-kvcache call: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    print(format_result(command.method, result))
    return EXIT_OK
