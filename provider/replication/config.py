"""Replication settings, read from the first link's values or from ``HostData.config_json``.

Keys are matched case-insensitively, like the Redis provider's ``URL``. Parsing is pure and
total: a bad value is reported in :attr:`ReplicationConfig.problems` (logged by the caller) and
the default is kept, so a typo never takes a cache down.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from contract.hostdata import normalize_nats_url
from provider.natsconn import connect_options

DEFAULT_HEARTBEAT_SECS = 5.0
DEFAULT_TOMBSTONE_HORIZON_SECS = 3600.0
#: A remote stamp further ahead of our wall clock than this is refused (CockroachDB's default
#: maximum clock offset is the same 500 ms). NTP keeps real hosts within a few milliseconds.
DEFAULT_MAX_CLOCK_OFFSET_MS = 500
#: How long a write waits for peers to confirm it (``WRITE_ACK=peers``). Far above a round trip
#: between zones (1-10 ms) and a GC pause, far below the host's 2 s RPC timeout: a peer that
#: misses it is marked lagging, and later writes stop waiting for it.
DEFAULT_WRITE_ACK_TIMEOUT_MS = 250
WRITE_ACK_MODES = ("peers", "local")
#: Replies to replication requests (snapshot chunks, repair answers, JetStream API answers)
#: arrive under this prefix instead of ``_INBOX``, so NATS permissions on ``kvcache.>`` cover
#: them too: a client that may not subscribe there cannot read the cache out of an inbox.
INBOX_PREFIX = "kvcache._INBOX"

#: Keys that decide *how* we replicate. Used to tell whether a later link disagrees.
REPLICATION_KEYS = (
    "NATS_URL",
    "CLIENT_JWT",
    "CLIENT_SEED",
    "CREDS_FILE",
    "TLS_CA_FILE",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "STATE_REPL_SUBJECT",
    "REPLAY_REQ_SUBJECT",
    "REPLAY_HEARTBEAT_SECS",
    "TOMBSTONE_HORIZON_SECS",
    "REPLICATION",
    "CACHE_PREFIX",
    "JS_STORAGE",
    "JS_REPLICAS",
    "JS_MAX_BYTES",
    "JS_DOMAIN",
    "WRITE_ACK",
    "WRITE_ACK_TIMEOUT_MS",
    "MAX_CLOCK_OFFSET_MS",
)

#: Values never to be logged.
SECRET_KEYS = frozenset({"CLIENT_JWT", "CLIENT_SEED"})

_TOKEN_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_STREAM_NAME_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
#: Joins the escaped lattice prefix and link name into one token. ``_`` always starts an
#: escape (``_`` + two hex digits), and ``_`` is no hex digit, so ``__`` can only be this.
NAME_SEPARATOR = "__"


def subject_token(text: str) -> str:
    """``text`` as one safe NATS subject token, injectively.

    Lattice prefixes and link names are free text. Letters, digits and ``-`` stay as they are;
    every other UTF-8 byte becomes ``_`` and two upper-case hex digits (``.`` → ``_2E``,
    ``_`` → ``_5F``). Distinct inputs therefore give distinct tokens: ``cache.v1`` and
    ``cache_v1`` name two caches, not one. The empty text becomes ``_``, which no other text
    produces.
    """
    if not text:
        return "_"
    if all(c in _TOKEN_PLAIN for c in text):
        return text
    return "".join(
        c if c in _TOKEN_PLAIN else "".join(f"_{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in text
    )


def unusable_name(text: str) -> bool:
    """True for a lattice prefix or link name that cannot name subjects: empty, or with an
    empty or wildcard (``*``, ``>``) subject token in it."""
    return not text or any(part in ("", "*", ">") for part in text.split("."))


def normalize(values: dict[str, str] | None) -> dict[str, str]:
    """Upper-case the keys we know; keep only string values."""
    if not values:
        return {}
    return {
        key.upper(): value
        for key, value in values.items()
        if isinstance(key, str) and isinstance(value, str)
    }


def parse_config_json(config_json: str | None) -> dict[str, str]:
    """``HostData.config_json`` as a flat ``{KEY: value}`` map; anything else yields ``{}``."""
    if not config_json:
        return {}
    try:
        document = json.loads(config_json)
    except ValueError:
        return {}
    if not isinstance(document, dict):
        return {}
    return normalize({k: v if isinstance(v, str) else json.dumps(v) for k, v in document.items()})


class ConnectionTuning(TypedDict, total=False):
    """What a backend may set on its connection beyond the configuration (see
    :func:`provider.natsconn.connect_options`)."""

    no_echo: bool
    ping_interval: float


@dataclass(slots=True)
class ReplicationConfig:
    """Everything a replication backend needs to know, with the defaults applied."""

    nats_url: str | None
    events_subject: str
    replay_subject: str
    heartbeat_secs: float = DEFAULT_HEARTBEAT_SECS
    tombstone_horizon_secs: float = DEFAULT_TOMBSTONE_HORIZON_SECS
    mode: str = "nats"
    client_jwt: str | None = field(default=None, repr=False)
    client_seed: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    cache_prefix: str = ""
    js_storage: str = "memory"
    js_replicas: int = 1
    js_max_bytes: int = -1
    js_domain: str | None = None
    write_ack: str = "peers"
    write_ack_timeout_ms: int = DEFAULT_WRITE_ACK_TIMEOUT_MS
    max_clock_offset_ms: int = DEFAULT_MAX_CLOCK_OFFSET_MS
    problems: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.nats_url is not None

    @classmethod
    def from_values(
        cls, values: dict[str, str], *, lattice_prefix: str, link_name: str
    ) -> ReplicationConfig:
        v = normalize(values)
        lattice, link = subject_token(lattice_prefix), subject_token(link_name)
        problems: list[str] = []
        config = cls(
            nats_url=_url(v.get("NATS_URL")),
            events_subject=v.get("STATE_REPL_SUBJECT") or f"kvcache.{lattice}.{link}.events",
            replay_subject=v.get("REPLAY_REQ_SUBJECT") or f"kvcache.{lattice}.{link}.replay",
            client_jwt=v.get("CLIENT_JWT") or None,
            client_seed=v.get("CLIENT_SEED") or None,
            creds_file=v.get("CREDS_FILE") or None,
            tls_ca_file=v.get("TLS_CA_FILE") or None,
            tls_cert_file=v.get("TLS_CERT_FILE") or None,
            tls_key_file=v.get("TLS_KEY_FILE") or None,
            cache_prefix=v.get("CACHE_PREFIX") or f"{lattice}{NAME_SEPARATOR}{link}",
            js_domain=v.get("JS_DOMAIN") or None,
            problems=problems,
        )
        config.heartbeat_secs = _number(
            v, "REPLAY_HEARTBEAT_SECS", DEFAULT_HEARTBEAT_SECS, 0.1, 3600, problems
        )
        config.tombstone_horizon_secs = _number(
            v, "TOMBSTONE_HORIZON_SECS", DEFAULT_TOMBSTONE_HORIZON_SECS, 1, 30 * 86400, problems
        )
        mode = (v.get("REPLICATION") or "nats").strip().lower()
        if mode not in ("nats", "jetstream"):
            problems.append(f"REPLICATION={mode!r} is not 'nats' or 'jetstream'; using 'nats'")
            mode = "nats"
        config.mode = mode
        if not _STREAM_NAME_TOKEN.fullmatch(config.cache_prefix):
            safe = subject_token(config.cache_prefix)
            problems.append(
                f"CACHE_PREFIX={config.cache_prefix!r} may hold only letters, digits, '_' and "
                f"'-'; using {safe!r}"
            )
            config.cache_prefix = safe
        storage = (v.get("JS_STORAGE") or "memory").strip().lower()
        if storage not in ("memory", "file"):
            problems.append(f"JS_STORAGE={storage!r} is not 'memory' or 'file'; using 'memory'")
            storage = "memory"
        config.js_storage = storage
        config.js_replicas = int(_number(v, "JS_REPLICAS", 1, 1, 5, problems))
        config.js_max_bytes = int(_number(v, "JS_MAX_BYTES", -1, -1, 2**62, problems))
        write_ack = (v.get("WRITE_ACK") or "peers").strip().lower()
        if write_ack not in WRITE_ACK_MODES:
            problems.append(f"WRITE_ACK={write_ack!r} is not 'peers' or 'local'; using 'peers'")
            write_ack = "peers"
        config.write_ack = write_ack
        config.write_ack_timeout_ms = int(
            _number(v, "WRITE_ACK_TIMEOUT_MS", DEFAULT_WRITE_ACK_TIMEOUT_MS, 1, 10_000, problems)
        )
        config.max_clock_offset_ms = int(
            _number(v, "MAX_CLOCK_OFFSET_MS", DEFAULT_MAX_CLOCK_OFFSET_MS, 1, 3_600_000, problems)
        )
        if bool(config.client_jwt) != bool(config.client_seed):
            problems.append("CLIENT_JWT and CLIENT_SEED must be given together; ignoring both")
            config.client_jwt = config.client_seed = None
        if bool(config.tls_cert_file) != bool(config.tls_key_file):
            problems.append("TLS_CERT_FILE and TLS_KEY_FILE must be given together; ignoring both")
            config.tls_cert_file = config.tls_key_file = None
        return config

    def connect_options(self, name: str, **extra: Unpack[ConnectionTuning]) -> dict[str, Any]:
        """nats-py options for this replication connection (credentials and TLS included)."""
        assert self.nats_url is not None, "replication is not configured"
        jwt_and_seed = None
        if self.client_jwt:
            assert self.client_seed is not None  # from_values keeps the two together
            jwt_and_seed = (self.client_jwt, self.client_seed)
        return connect_options(
            self.nats_url,
            name,
            jwt_and_seed=jwt_and_seed,
            creds_file=self.creds_file,
            tls_ca_file=self.tls_ca_file,
            tls_cert_file=self.tls_cert_file,
            tls_key_file=self.tls_key_file,
            inbox_prefix=INBOX_PREFIX,
            **extra,
        )

    def fingerprint(self) -> tuple[str | None, ...]:
        """What identifies the replication set-up (to spot a later link that disagrees)."""
        return (
            self.nats_url,
            self.events_subject,
            self.replay_subject,
            self.mode,
            self.cache_prefix,
            self.creds_file,
            self.client_jwt,
        )


def _url(value: str | None) -> str | None:
    """``NATS_URL``: one server or a comma-separated list; ``host:port`` gets ``nats://``."""
    return normalize_nats_url(value) or None


def _number(
    values: dict[str, str], key: str, default: float, low: float, high: float, problems: list[str]
) -> float:
    raw = values.get(key)
    if raw is None or raw == "":
        return default
    try:
        number = float(raw)
    except ValueError:
        problems.append(f"{key}={raw!r} is not a number; using the default {default:g}")
        return default
    if not low <= number <= high or number != number:
        problems.append(
            f"{key}={raw!r} is outside {low:g}..{high:g}; using the default {default:g}"
        )
        return default
    return number
