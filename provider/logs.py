"""Logging set-up: structlog to stderr, as the host protocol requires.

The host captures a provider's stdout and re-logs it line by line, so everything we log goes to
stderr (protocol spec §13). ``structured_logging`` in HostData selects one JSON object per line;
otherwise logs are human-readable. Secrets are never passed to a logger: callers log key
*names*, never seeds or JWTs, and :func:`redact` is there for values of unknown provenance.
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

_SECRET_MARKERS = ("SEED", "JWT", "PASSWORD", "TOKEN", "SECRET", "CREDS")


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


def redact(values: dict[str, str]) -> dict[str, str]:
    """A copy of link values safe to log: anything that looks like a secret is masked."""
    return {
        key: ("<redacted>" if any(m in key.upper() for m in _SECRET_MARKERS) else value)
        for key, value in values.items()
    }
