"""``nats-kvcache health``: ask a running provider whether it is healthy, as the host does.

Sends the OTP host's health request (msgpack ``{"placeholder": true}``) on
``wasmbus.rpc.{lattice}.{provider key}.{link}.health`` and waits for the replies. Meant for
container health checks (the Dockerfile's ``HEALTHCHECK``) and for operators.

Settings: flags first, then the environment variables the container entrypoint
(``docker/provider-from-env.sh``) reads (``LATTICE_RPC_URL``, ``LATTICE_RPC_PREFIX``,
``PROVIDER_KEY``, ``LINK_NAME``, ``LATTICE_RPC_USER_JWT``/``LATTICE_RPC_USER_SEED``), then the
dev lattice state file, then defaults.

Every instance of a provider (same key and link name) answers on the same subject, so a reply
says "some instance of this provider is healthy", not which one. ``--min-healthy N`` waits up to
``--timeout`` for N healthy replies.

``--skip-unconfigured`` (used by the Dockerfile's ``HEALTHCHECK``) exits 0 when no provider key
is known at all: a container fed its HostData by hand has nothing to check with.

Exit codes: 0 healthy, 1 an unhealthy (or undecodable) reply, 2 bad usage or missing settings,
3 no reply (no NATS, no provider listening, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors

from contract.hostdata import DEFAULT_NATS_URL, normalize_nats_url
from contract.nkeys import NKeyError
from contract.wire import HEALTH_REQUEST, HealthCheckResponse, Subjects
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
)
from provider.natsconn import connect_options

EXIT_HEALTHY, EXIT_UNHEALTHY = EXIT_OK, EXIT_FAILED
DEFAULT_TIMEOUT = 3.0

ENV_URL = "LATTICE_RPC_URL"
ENV_LATTICE = "LATTICE_RPC_PREFIX"
ENV_PROVIDER_KEY = "PROVIDER_KEY"
ENV_LINK_NAME = "LINK_NAME"
ENV_USER_JWT = "LATTICE_RPC_USER_JWT"
ENV_USER_SEED = "LATTICE_RPC_USER_SEED"


class NotConfigured(UsageError):
    """No provider key from any source (``--skip-unconfigured`` turns this into exit 0)."""


@dataclass(slots=True)
class Target:
    nats_url: str
    subjects: Subjects
    credentials: tuple[str, str] | None
    timeout: float
    min_healthy: int


@dataclass(slots=True)
class Outcome:
    healthy: int = 0
    problems: list[str] = field(default_factory=list)  # messages of unhealthy replies


def resolve(args: argparse.Namespace) -> Target:
    location = statefile.locate(args.state)
    try:
        saved = statefile.read(location)
    except statefile.StateError as failure:
        raise UsageError(str(failure)) from None
    env = os.environ.get
    url = normalize_nats_url(args.nats_url or env(ENV_URL) or saved.nats_url or DEFAULT_NATS_URL)
    provider_key = args.provider_key or env(ENV_PROVIDER_KEY) or saved.provider_key
    if not provider_key:
        hint = "" if location.path.exists() else f" ({location.not_found()})"
        raise NotConfigured(
            f"missing --provider-key: pass it, set ${ENV_PROVIDER_KEY} or start "
            f"`nats-kvcache dev`{hint}"
        )
    jwt, seed = (env(ENV_USER_JWT) or "").strip(), (env(ENV_USER_SEED) or "").strip()
    if bool(jwt) != bool(seed):
        raise UsageError(f"${ENV_USER_JWT} and ${ENV_USER_SEED} must be set together")
    if args.timeout <= 0:
        raise UsageError("--timeout must be > 0")
    if args.min_healthy < 1:
        raise UsageError("--min-healthy must be >= 1")
    subjects = Subjects(
        args.lattice or env(ENV_LATTICE) or saved.lattice or "default",
        provider_key,
        args.link_name or env(ENV_LINK_NAME) or saved.link_name or "default",
    )
    return Target(url, subjects, (jwt, seed) if jwt else None, args.timeout, args.min_healthy)


async def collect_health(
    nc: Any, subject: str, *, window: float, enough: int
) -> list[HealthCheckResponse]:
    """Send one host-style health request; collect answers until ``enough`` healthy ones or
    ``window`` seconds. Every instance on the subject answers, anonymously."""
    answers: list[HealthCheckResponse] = []
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(subject, HEALTH_REQUEST, reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        while sum(answer.healthy for answer in answers) < enough:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                break
            if not msg.data:  # a "503 no responders" status, not an answer
                continue
            try:
                answers.append(HealthCheckResponse.decode_msgpack(msg.data))
            except ValueError as error:
                answers.append(HealthCheckResponse(False, f"undecodable health reply: {error}"))
    finally:
        await sub.unsubscribe()
    return answers


async def probe(target: Target) -> Outcome:
    """One health request; collect replies until ``min_healthy`` or the timeout."""
    try:
        options = connect_options(
            target.nats_url, "nats-kvcache health", jwt_and_seed=target.credentials
        )
    except NKeyError as failure:  # never includes the seed itself
        raise UsageError(f"${ENV_USER_SEED}: {failure}") from None
    for name in ("servers", "name", "connect_timeout", "allow_reconnect", "max_reconnect_attempts"):
        options.pop(name, None)  # one attempt, no reconnects: common.connect decides those
    nc = await connect(
        target.nats_url,
        name="nats-kvcache health",
        timeout=min(target.timeout, 2.0),
        connect_hint=f"check --nats-url (or ${ENV_URL}), or start `nats-kvcache dev`",
        **options,
    )
    try:
        answers = await collect_health(
            nc, target.subjects.health, window=target.timeout, enough=target.min_healthy
        )
    finally:
        await nc.close()
    outcome = Outcome()
    for answer in answers:
        if answer.healthy:
            outcome.healthy += 1
        else:
            outcome.problems.append(answer.message or "unhealthy (no message)")
    return outcome


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "health",
        help="health-check a running provider (exit 0 when healthy)",
        description="Send a host-style health request to the provider and report the answer.",
        epilog="Exit codes: 0 healthy, 1 unhealthy, 2 usage/settings, 3 no answer.",
    )
    parser.add_argument("--nats-url", help=f"NATS server (default ${ENV_URL}, state file, local)")
    parser.add_argument("--lattice", help=f"lattice prefix (default ${ENV_LATTICE} or 'default')")
    parser.add_argument("--provider-key", help=f"provider public key V... (or ${ENV_PROVIDER_KEY})")
    parser.add_argument("--link-name", help=f"link name (default ${ENV_LINK_NAME} or 'default')")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for replies (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--min-healthy", type=int, default=1, metavar="N", help="healthy replies required (1)"
    )
    parser.add_argument(
        "--state",
        help=f"dev lattice state file (default ${statefile.STATE_ENV}, else the nearest "
        f"{statefile.DEFAULT_STATE_PATH} in this or a parent directory)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing when healthy")
    parser.add_argument(
        "--skip-unconfigured",
        action="store_true",
        help="exit 0 when no provider key is configured at all (container health checks)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        target = resolve(args)
        outcome = asyncio.run(probe(target))
    except NotConfigured as failure:
        if args.skip_unconfigured:
            if not args.quiet:
                print(f"not checked: {failure}")
            return EXIT_HEALTHY
        error("health", failure)
        return EXIT_USAGE
    except UsageError as failure:
        error("health", failure)
        return EXIT_USAGE
    except Unreachable as failure:
        error("health", failure)
        return EXIT_UNREACHABLE
    subject = target.subjects.health
    if outcome.problems:
        print(f"unhealthy: {'; '.join(outcome.problems)} ({subject})", file=sys.stderr)
        return EXIT_UNHEALTHY
    if outcome.healthy == 0:
        print(
            f"no answer within {target.timeout:g}s on {subject}: is the provider running?"
            " (check --provider-key, --lattice, --link-name)",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    if outcome.healthy < target.min_healthy:
        print(
            f"only {outcome.healthy} of {target.min_healthy} healthy replies on {subject}",
            file=sys.stderr,
        )
        return EXIT_UNHEALTHY
    if not args.quiet:
        print(f"healthy ({outcome.healthy} repl{'y' if outcome.healthy == 1 else 'ies'})")
    return EXIT_HEALTHY
