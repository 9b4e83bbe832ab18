"""``nats-kvcache call OP ARGS...``: run one KeyValue operation against a running provider.

The call goes through :class:`contract.client.KeyValueClient`, i.e. a signed invocation exactly
like the OTP host sends, so a command that works here works for a real actor too. Settings not
given as flags come from the dev lattice state file (see :mod:`provider.cli.state`).

``--instance N`` connects to instance N's own leaf server (its address is in the state file).
NATS hands a request to a queue subscriber on the server it was published on when there is one,
so instance N answers; before the call, instance N is asked for its status on its own subject,
so a dead instance N is an error (exit 3) instead of an answer from another instance.

Exit codes: 0 success (a missing key prints ``(nil)`` and still exits 0: "not found" is a
normal answer of ``Get``, not a failure), 1 the provider answered with an error, 2 bad usage or
missing settings, 3 the provider could not be reached (no NATS, no responders, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors

from contract.client import KeyValueClient, KeyValueError
from contract.hostdata import DEFAULT_NATS_URL, normalize_nats_url
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
from provider.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Unreachable,
    UsageError,
    connect,
    error,
    instance_index,
    program,
    warn,
)
from provider.observe.introspection import status_subject

SEED_ENV = "NATS_KVCACHE_SEED"
DEFAULT_TIMEOUT = 2.0
EXIT_ERROR_REPLY = EXIT_FAILED

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
U32_MAX = 2**32 - 1


def _int(text: str, what: str, low: int = I32_MIN, high: int = I32_MAX) -> int:
    """An integer argument, range-checked here so the message names the argument."""
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        kind = "a 32-bit integer" if low < 0 else "an unsigned 32-bit integer"
        raise UsageError(f"{what} must be {kind} ({low}..{high}), got {text}")
    return value


@dataclass(frozen=True, slots=True)
class Command:
    """A friendly operation: contract method, argument names (usage text) and argument builder."""

    name: str
    method: str
    params: str
    build: Callable[[list[str], int], Any]  # (positional args, --expires) → contract argument
    arity: int  # number of positional args; -1 = one or more

    @property
    def value_index(self) -> int | None:
        """Position of the VALUE argument (which may be ``-`` or ``@FILE``), if any."""
        names = self.params.split()
        return names.index("VALUE") if "VALUE" in names else None


def _one(args: list[str], _: int) -> str:
    return args[0]


def _delta(args: list[str]) -> int:
    return _int(args[1], "increment")


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


def read_value(text: str, *, stdin: Any = None) -> str:
    """``-``: all of stdin; ``@FILE``: the file's content; anything else: itself.

    Read as-is (a trailing newline is kept, as ``redis-cli -x`` does): use ``printf``, not
    ``echo``, for an exact value. Values are strings, so the bytes must be UTF-8."""
    if text == "-":
        data, where = (stdin or sys.stdin.buffer).read(), "stdin"
    elif text.startswith("@") and len(text) > 1:
        where = text[1:]
        try:
            data = Path(where).read_bytes()
        except FileNotFoundError:
            raise UsageError(f"value file {where}: no such file") from None
        except OSError as failure:
            raise UsageError(f"value file {where}: {failure.strerror}") from None
    else:
        return text
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"value from {where} is not UTF-8 text") from None


def build_argument(
    command: Command,
    args: list[str],
    expires: int | None,
    *,
    literal: bool = False,
    stdin: Any = None,
) -> Any:
    """Check the arity and turn the command-line strings into the contract argument."""
    arity_ok = len(args) >= 1 if command.arity < 0 else len(args) == command.arity
    if not arity_ok:
        raise UsageError(f"usage: nats-kvcache call {command.name} {command.params}")
    if expires is not None and command.name != "set":
        raise UsageError("--expires only applies to set")
    if expires is not None and not 0 <= expires <= U32_MAX:
        raise UsageError(f"--expires must be 0..{U32_MAX} (seconds; 0 = never)")
    args = list(args)
    index = command.value_index
    if index is not None and not literal:
        args[index] = read_value(args[index], stdin=stdin)
    argument = command.build(args, expires or 0)
    operation = OPERATIONS[command.method]
    try:  # round-trip locally so what the provider would refuse is a usage error, not a reply
        operation.decode_input(operation.encode_input(argument))
    except ArgumentError as failure:
        raise UsageError(f"invalid argument: {failure}") from None
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


def format_json(method: str, result: Any) -> str:
    """One JSON value, as ``redis-cli --json``: a missing key is ``null`` (never the string
    "(nil)"), ``"OK"`` for operations without a result, numbers, booleans and arrays."""
    output_type = OPERATIONS[method].output_type
    if output_type == "GetResponse":
        value: Any = result.value if result.exists else None
    elif output_type == "Unit":
        value = "OK"
    elif output_type == "StringList":
        value = list(result)
    else:
        value = result
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class Target:
    """One instance of the dev lattice (``--instance N``), as the state file describes it."""

    index: int
    instance_id: str
    restart_hint: str  # the command that starts it again

    def down(self, why: str) -> Unreachable:
        return Unreachable(
            f"instance {self.index} is down ({why}); nothing was sent to another instance."
            f" Start it again with `{self.restart_hint}`"
        )


@dataclass(slots=True)
class Connection:
    nats_url: str
    lattice: str
    provider_key: str
    link_name: str
    actor: str
    signer: KeyPair
    timeout: float
    target: Target | None = None


def read_seed(args: argparse.Namespace) -> str | None:
    """``--seed-file``, else ``--seed`` (with a warning: it lands in ps and shell history),
    else ``$NATS_KVCACHE_SEED``; ``None`` when none is given (then the state file's)."""
    if args.seed and args.seed_file:
        raise UsageError("give --seed or --seed-file, not both")
    if args.seed_file:
        try:
            seed = Path(args.seed_file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise UsageError(f"--seed-file {args.seed_file}: no such file") from None
        except (OSError, UnicodeDecodeError) as failure:
            reason = getattr(failure, "strerror", None) or "not a text file"
            raise UsageError(f"--seed-file {args.seed_file}: {reason}") from None
        if not seed:
            raise UsageError(f"--seed-file {args.seed_file} is empty")
        return seed
    if args.seed:
        warn(
            "call",
            "--seed on the command line is visible in ps and shell history; "
            f"use --seed-file FILE or ${SEED_ENV}",
        )
        return args.seed
    return os.environ.get(SEED_ENV) or None


def resolve_connection(args: argparse.Namespace) -> Connection:
    """Flags first, then (seed only) ``$NATS_KVCACHE_SEED``, then the state file, then defaults."""
    location = statefile.locate(args.state)
    try:
        saved = statefile.read(location)
    except statefile.StateError as failure:
        raise UsageError(str(failure)) from None
    target = None
    if args.instance is not None:
        target, instance_url = _target(args, location, saved)
        nats_url = normalize_nats_url(instance_url)
    else:
        nats_url = normalize_nats_url(args.nats_url or saved.nats_url or DEFAULT_NATS_URL)
    seed = read_seed(args)
    values = {
        "provider_key": args.provider_key or saved.provider_key,
        "actor": args.actor or saved.actor,
        "seed": seed or saved.seed,
    }
    missing = [f"--{name.replace('_', '-')}" for name, value in values.items() if not value]
    if missing:
        hint = ""
        if not location.path.exists():
            hint = f"; start `nats-kvcache dev` or pass them ({location.not_found()})"
        raise UsageError(f"missing required setting(s): {', '.join(missing)}{hint}")
    try:
        signer = KeyPair.from_seed(values["seed"])
    except NKeyError as failure:  # NKeyError texts never include the seed itself
        source = "--seed-file" if args.seed_file else "--seed" if args.seed else f"${SEED_ENV}"
        source = source if seed else f"seed in {location.path}"
        raise UsageError(f"{source}: {failure}") from None
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
        target=target,
    )


def _target(
    args: argparse.Namespace, location: statefile.Location, saved: statefile.DevState
) -> tuple[Target, str]:
    """``--instance N``: instance N's entry in the state file and its own NATS URL."""
    if args.nats_url:
        raise UsageError("give --instance or --nats-url, not both")
    if not location.path.exists():
        raise UsageError(
            f"--instance needs a running `nats-kvcache dev` lattice ({location.not_found()})"
        )
    try:
        entry = saved.instance(args.instance)
    except statefile.StateError as failure:
        raise UsageError(str(failure)) from None
    state_flag = f" --state {args.state}" if args.state else ""
    target = Target(
        args.instance,
        str(entry.get("instance_id") or ""),
        f"{program()} instance restart {args.instance}{state_flag}",
    )
    url = entry.get("nats_url")
    if not isinstance(url, str) or not url:
        raise UsageError(f"{location.path} has no address for instance {args.instance}")
    state = entry.get("state")
    if state != "running":
        raise target.down(f"the dev lattice reports it {state}")
    return target, url


async def invoke(conn: Connection, method: str, argument: Any) -> Any:
    hint = "is the dev lattice running (`nats-kvcache dev`)? else pass --nats-url"
    if conn.target is not None:
        hint = f"instance {conn.target.index}'s leaf server is down; is the dev lattice running?"
    nc = await connect(
        conn.nats_url,
        name="nats-kvcache call",
        timeout=min(conn.timeout, 5.0),
        connect_hint=hint,
    )
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
        if conn.target is not None:
            await _check_target(nc, conn)
        return await client.call(method, argument)
    except nats.errors.NoRespondersError:
        raise Unreachable(
            f"no provider is listening on {client.subject}; check --provider-key/--lattice/"
            "--link-name, or start `nats-kvcache dev`"
        ) from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise Unreachable(
            f"timed out after {conn.timeout:g}s waiting for the provider on {client.subject};"
            " try a longer --timeout"
        ) from None
    except nats.errors.MaxPayloadError:
        raise UsageError(
            "the invocation is larger than the NATS server's max_payload; use a smaller value"
        ) from None
    finally:
        await nc.close()


async def _check_target(nc: Any, conn: Connection) -> None:
    """Instance N answers on its own status subject, or the call is not made: through its
    leaf, another instance would answer it (that is failover, but not what was asked)."""
    target = conn.target
    assert target is not None
    subject = status_subject(conn.lattice, conn.link_name, target.instance_id)
    wait = min(conn.timeout, 1.0)
    try:
        await nc.request(subject, b"", timeout=wait)
    except nats.errors.NoRespondersError:
        raise target.down("its provider does not answer on its leaf server") from None
    except (nats.errors.TimeoutError, TimeoutError):
        raise target.down(f"no status answer within {wait:g}s") from None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    ops = ", ".join(f"{c.name} {c.params}" for c in COMMANDS)
    parser = subparsers.add_parser(
        "call",
        help="invoke one KeyValue operation on a running provider",
        description=f"Operations: {ops}. A VALUE of '-' is read from stdin and '@FILE' from"
        " FILE, as-is (--literal takes them literally). Values starting with '-' go after '--'.",
        epilog="Output: values plainly, lists one item per line or '(empty list)', a missing key"
        " '(nil)' (exit 0); with --json one JSON value (a missing key is null). Exit codes:"
        " 1 error reply, 2 usage/settings, 3 provider unreachable.",
    )
    parser.add_argument("op", help="operation, e.g. get, set, list-add (or ListAdd)")
    parser.add_argument("args", nargs="*", help="operation arguments")
    parser.add_argument("--expires", type=int, metavar="N", help="set: expire after N seconds")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON value")
    parser.add_argument(
        "--literal", action="store_true", help="a VALUE of '-' or '@FILE' is the value itself"
    )
    parser.add_argument(
        "--instance",
        type=instance_index,
        metavar="N",
        help="dev lattice: call instance N only (through its own leaf server); fails if it is down",
    )
    parser.add_argument(
        "--nats-url", help=f"NATS server (default: state file, else {DEFAULT_NATS_URL})"
    )
    parser.add_argument("--lattice", help="lattice prefix (default: state file, else 'default')")
    parser.add_argument("--provider-key", help="provider public key V...")
    parser.add_argument("--link-name", help="link name (default: state file, else 'default')")
    parser.add_argument(
        "--seed-file",
        metavar="FILE",
        help=f"file holding the seed of a trusted cluster issuer (or ${SEED_ENV})",
    )
    parser.add_argument(
        "--seed", help="the seed itself (visible in ps and shell history: prefer --seed-file)"
    )
    parser.add_argument("--actor", help="public key M... of a linked actor")
    parser.add_argument("--timeout", type=float, help=f"seconds (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument(
        "--state",
        help=f"state file (default ${statefile.STATE_ENV}, else the nearest "
        f"{statefile.DEFAULT_STATE_PATH} in this or a parent directory)",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        command = find_command(args.op)
        argument = build_argument(command, args.args, args.expires, literal=args.literal)
        conn = resolve_connection(args)
        result = asyncio.run(invoke(conn, command.method, argument))
    except UsageError as failure:
        error("call", failure)
        return EXIT_USAGE
    except ArgumentError as failure:  # the reply did not decode as the operation's result
        error("call", f"undecodable reply from the provider: {failure}")
        return EXIT_ERROR_REPLY
    except Unreachable as failure:
        error("call", failure)
        return EXIT_UNREACHABLE
    except KeyValueError as failure:
        print(f"error: {failure}", file=sys.stderr)
        return EXIT_ERROR_REPLY
    if args.json:
        print(format_json(command.method, result))
    else:
        print(format_result(command.method, result))
    return EXIT_OK
