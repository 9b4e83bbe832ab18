"""``nats-kvcache instance ls|kill|stop|restart|add``: change a running dev lattice.

``dev`` stays in the foreground with its status display; this command, from another terminal,
asks it (over the Unix socket named in the state file, see :mod:`provider.cli.dev`) to kill an
instance (SIGKILL: a crash, so failover can be watched), stop one cleanly, restart one (it
replays the others' state before it is reported healthy) or add one, the way ``docker compose
kill|stop|restart`` and ``up --scale`` change a running project. ``ls`` lists the instances with
the address ``call --instance N`` uses.

Exit codes: 0 done, 1 the lattice refused or the change failed (the reason is printed), 2 bad
usage or no state file, 3 the dev lattice is not running (its socket does not answer).
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

from provider.cli import state as statefile
from provider.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Unreachable,
    UsageError,
    error,
    instance_index,
    program,
)
from provider.cli.lattice import START_TIMEOUT

#: A restart or an add waits for the instance to be healthy; ``dev`` gives up after
#: START_TIMEOUT per step (leaf, provider), so this only guards against a hung ``dev``.
TIMEOUT = 3 * START_TIMEOUT


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "instance",
        help="list, kill, stop, restart or add instances of a running dev lattice",
        description="Change the running `nats-kvcache dev` lattice from another terminal.",
        epilog="Example: `instance kill 1`, then `call --instance 1 get k` fails while `call"
        " --instance 0 set k v` still works; `instance restart 1` and `call --instance 1 get k`"
        " shows what it replayed from the others. Exit codes: 1 refused or failed,"
        " 2 usage/no state file, 3 dev lattice not running.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    specs = (
        ("ls", "list the instances: state, pid, address for `call --instance`", False),
        ("kill", "SIGKILL instance N's provider (a crash; its leaf server stays)", True),
        ("stop", "shut instance N down cleanly (the host's shutdown request)", True),
        ("restart", "start instance N again (stopping it first if it runs)", True),
        ("add", "start one more instance", False),
    )
    for name, text, takes_index in specs:
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:])
        if takes_index:
            action.add_argument("index", type=instance_index, metavar="N", help="instance index")
        action.add_argument(
            "--state",
            help=f"state file (default ${statefile.STATE_ENV}, else the nearest "
            f"{statefile.DEFAULT_STATE_PATH} in this or a parent directory)",
        )
        action.add_argument("--json", action="store_true", help="print the answer as JSON")
        action.set_defaults(run=run)


def request(control: str, body: dict[str, Any], timeout: float = TIMEOUT) -> dict[str, Any]:
    """One request to ``dev``'s control socket; :class:`Unreachable` when nothing listens."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(control)
            sock.sendall(json.dumps(body).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unreachable(
            f"the dev lattice is not running (nothing listens on {control});"
            f" start it with `{program()} dev`"
        ) from None
    except TimeoutError:
        raise Unreachable(f"no answer from the dev lattice within {timeout:g}s") from None
    except OSError as failure:
        raise Unreachable(f"cannot reach the dev lattice at {control}: {failure}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise Unreachable("the dev lattice closed the connection without an answer") from None
    if not isinstance(answer, dict):
        raise Unreachable("the dev lattice sent a malformed answer")
    return answer


def render_ls(instances: list[dict[str, Any]]) -> str:
    header = f"{'N':<4}{'state':<10}{'pid':<9}{'address':<25}{'instance id':<38}log"
    lines = [header]
    for entry in instances:
        lines.append(
            f"{entry.get('index', '?')!s:<4}{entry.get('state', '?')!s:<10}"
            f"{entry.get('pid') or '-'!s:<9}{entry.get('nats_url', '-')!s:<25}"
            f"{entry.get('instance_id', '-')!s:<38}{entry.get('log', '-')}"
        )
    return "\n".join(lines)


def _control(args: argparse.Namespace) -> str:
    """The control socket from the state file; an unknown index is a usage error here."""
    location = statefile.locate(args.state)
    try:
        saved = statefile.read(location)
        if not location.path.exists():
            raise UsageError(f"{location.not_found()}; start `{program()} dev` first")
        if getattr(args, "index", None) is not None:
            saved.instance(args.index)
    except statefile.StateError as failure:
        raise UsageError(str(failure)) from None
    if not saved.control:
        raise UsageError(f"{location.path} names no control socket (an older `dev`?)")
    return saved.control


def run(args: argparse.Namespace) -> int:
    try:
        control = _control(args)
        body: dict[str, Any] = {"op": args.action}
        if getattr(args, "index", None) is not None:
            body["index"] = args.index
        answer = request(control, body)
    except UsageError as failure:
        error("instance", failure)
        return EXIT_USAGE
    except Unreachable as failure:
        error("instance", failure)
        return EXIT_UNREACHABLE
    if not answer.get("ok"):
        error("instance", answer.get("error") or "refused")
        return EXIT_FAILED
    if args.json:
        print(json.dumps(answer.get("instances") if args.action == "ls" else answer, indent=2))
    elif args.action == "ls":
        print(render_ls(answer.get("instances") or []))
    else:
        print(answer.get("message", "OK"))
    return EXIT_OK
