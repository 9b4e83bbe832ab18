"""nats-py connection options shared by the lattice and replication connections.

Both connections live as long as the process: they reconnect forever, and authentication
secrets (a user JWT and nkey seed, or a .creds file) only ever live inside nats-py's callbacks.
Nothing here logs, and nothing returned here has a secret in its ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NATS

from contract.nkeys import KeyPair


def connect_options(
    url: str,
    name: str,
    *,
    jwt_and_seed: tuple[str, str] | None = None,
    creds_file: str | None = None,
    tls_ca_file: str | None = None,
    tls_cert_file: str | None = None,
    tls_key_file: str | None = None,
    no_echo: bool = False,
    ping_interval: float = 120,
    inbox_prefix: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` for a long-lived daemon connection.

    ``url`` may list several servers of one cluster, comma-separated, for failover.
    """
    options: dict[str, Any] = {
        "servers": [part.strip() for part in url.split(",") if part.strip()],
        "name": name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "connect_timeout": 2,
        "no_echo": no_echo,
        # A blackholed connection is only noticed when pings go unanswered.
        "ping_interval": ping_interval,
        "max_outstanding_pings": 2,
    }
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if jwt_and_seed is not None:
        jwt, seed = jwt_and_seed
        signer = KeyPair.from_seed(seed)
        options["user_jwt_cb"] = lambda: jwt.encode()
        options["signature_cb"] = lambda nonce: base64.urlsafe_b64encode(
            signer.sign(nonce.encode())
        ).rstrip(b"=")
    if creds_file:
        options["user_credentials"] = creds_file
    if tls_ca_file or tls_cert_file:
        context = ssl.create_default_context(cafile=tls_ca_file)
        if tls_cert_file and tls_key_file:
            context.load_cert_chain(tls_cert_file, tls_key_file)
        options["tls"] = context
    return options


async def connect_forever(
    options: dict[str, Any], on_failure: Callable[[Exception], None], **callbacks: Any
) -> NATS:
    """Connect, retrying with backoff (0.5 s, doubling to 5 s) until the server answers.

    nats-py reconnects forever once connected, but the *first* connection fails outright; for a
    daemon an unreachable server is a health problem to report (``on_failure``), not a crash.
    """
    delay = 0.5
    while True:
        try:
            return await nats.connect(**options, **callbacks)
        except Exception as error:
            on_failure(error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
