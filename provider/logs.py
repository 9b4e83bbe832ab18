"""Logging set-up: structlog to stderr, as the host protocol requires.

The host captures a provider's stdout and re-logs it line by line, so everything we log goes to
stderr (protocol spec §13). ``structured_logging`` in HostData selects one JSON object per line;
otherwise logs are human-readable. Secrets are never passed to a logger: callers log key
*names*, never seeds or JWTs, and :func:`redact_url` masks credentials in any URL we show.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

#: Erlang (OTP host) and Rust level names mapped onto Python levels (spec §13).
_LEVELS = {
    "emergency": logging.ERROR,
    "alert": logging.ERROR,
    "critical": logging.ERROR,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "notice": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def resolve_level(log_level: str | None) -> int:
    """HostData ``log_level`` wins, then ``RUST_LOG``, then info; unknown names mean info."""
    name = log_level or os.environ.get("RUST_LOG") or "info"
    # RUST_LOG may be a filter like "info,async_nats=warn": its first bare level decides.
    first = name.split(",")[0].split("=")[-1].strip().lower()
    return _LEVELS.get(first, logging.INFO)


def configure(*, structured: bool, log_level: str | None) -> None:
    level = resolve_level(log_level)
    renderer = (
        structlog.processors.JSONRenderer()
        if structured
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def redact_url(url: str | None) -> str:
    """``url`` (one server or a comma-separated list) with any password or token masked.

    Health answers, ``$SRV.STATS`` and logs can be read by others: ``nats://alice:s3cret@h``
    becomes ``nats://alice:***@h``, and a token-only ``nats://t0ken@h`` becomes ``nats://***@h``.
    Pure string work that never raises, whatever the input.
    """
    if not url:
        return ""
    return ",".join(_redact_one(part) for part in str(url).split(","))


def _redact_one(part: str) -> str:
    scheme, sep, rest = part.partition("://")
    if not sep:
        scheme, rest = "", part
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return part
    user, colon, _secret = userinfo.partition(":")
    masked = f"{user}:***" if colon else "***"
    return f"{scheme}{sep}{masked}@{host}"
