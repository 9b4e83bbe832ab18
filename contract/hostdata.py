"""HostData: the start-up configuration a host writes to the provider's stdin (spec §2, §3).

One base64 line, padded by the OTP host and unpadded + CRLF from the test harness, holding a
JSON object. It carries everything the provider needs before it can talk to anyone — NATS
address and credentials, its own key, the trusted claims issuers and the links that already
exist — so decoding is strict and any problem is fatal (``HostDataError``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from contract import _fields as f
from contract.codec import WireError, pack_json
from contract.links import LinkDefinition

__all__ = [
    "DEFAULT_NATS_URL",
    "TEST_MODE_HOST_ID",
    "HostData",
    "HostDataError",
    "normalize_nats_url",
]

TEST_MODE_HOST_ID = "_TEST_"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def normalize_nats_url(value: str | None) -> str:
    """One server or a comma-separated list, each ``host:port`` given the ``nats://`` scheme.

    The OTP host, link values and operators all write bare ``host:port``; nats-py needs a
    scheme. Every place that accepts a NATS address goes through here, so they all agree on
    lists, blanks and schemes. Returns ``""`` when nothing usable is left.
    """
    parts = [part.strip() for part in (value or "").split(",") if part.strip()]
    return ",".join(part if "://" in part else f"nats://{part}" for part in parts)


class HostDataError(ValueError):
    """The HostData handed over on stdin is unusable; the provider must exit non-zero."""


_HOSTDATA_STR_FIELDS = (
    "host_id",
    "lattice_rpc_prefix",
    "link_name",
    "lattice_rpc_user_jwt",
    "lattice_rpc_user_seed",
    "lattice_rpc_url",
    "provider_key",
    "invocation_seed",
    "instance_id",
)


@dataclass(slots=True, repr=False)
class HostData:
    """Start-up configuration the host writes to the provider's stdin (spec §2, §3).

    Every field is defaulted so fake hosts can build one easily; ``from_json`` still enforces
    the three keys the Rust decoder requires (``env_values``, ``link_definitions``,
    ``cluster_issuers``) so a truncated document fails at start-up, not later.
    """

    host_id: str = ""
    lattice_rpc_prefix: str = ""
    link_name: str = ""
    lattice_rpc_user_jwt: str = ""
    lattice_rpc_user_seed: str = ""
    lattice_rpc_url: str = ""
    provider_key: str = ""
    invocation_seed: str = ""
    env_values: dict[str, str] = field(default_factory=dict)
    instance_id: str = ""
    link_definitions: list[LinkDefinition] = field(default_factory=list)
    cluster_issuers: list[str] = field(default_factory=list)
    config_json: str | None = None
    default_rpc_timeout_ms: int | None = None
    structured_logging: bool = False
    log_level: str | None = None

    @classmethod
    def from_json(cls, data: bytes | str) -> HostData:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError, TypeError) as exc:
            raise HostDataError(f"host data is not valid JSON: {exc}") from None
        if type(obj) is not dict:
            raise HostDataError("host data must be a JSON object")
        try:
            return cls._from_dict(obj)
        except (f.FieldError, WireError) as exc:
            raise HostDataError(f"invalid host data: {exc}") from None

    @classmethod
    def _from_dict(cls, obj: dict[str, Any]) -> HostData:
        for key in ("env_values", "link_definitions", "cluster_issuers"):
            if key not in obj:
                raise f.missing(key)
        strings = {k: f.as_str(obj.get(k, ""), k) for k in _HOSTDATA_STR_FIELDS}
        links = obj["link_definitions"]
        if type(links) is not list:
            raise f.type_error("link_definitions", links, "a sequence of link definitions")
        config_json = obj.get("config_json")
        if config_json is not None:
            f.as_str(config_json, "config_json")
        timeout = obj.get("default_rpc_timeout_ms")
        if timeout is not None:
            f.as_int(timeout, "default_rpc_timeout_ms", 0, f.U64_MAX, "u64")
        log_level = obj.get("log_level")
        if log_level is not None:
            f.as_str(log_level, "log_level")
        return cls(
            **strings,
            env_values=f.as_str_map(obj["env_values"], "env_values"),
            link_definitions=[LinkDefinition.from_obj(ld) for ld in links],
            cluster_issuers=f.as_str_list(obj["cluster_issuers"], "cluster_issuers"),
            config_json=config_json or None,
            default_rpc_timeout_ms=timeout,
            structured_logging=f.as_bool(
                obj.get("structured_logging", False), "structured_logging"
            ),
            log_level=log_level,
        )

    @classmethod
    def from_stdin_line(cls, line: bytes | str) -> HostData:
        """Decode the one base64 line from stdin, padded (OTP host) or not (test harness)."""
        if isinstance(line, str):
            try:
                line = line.encode("ascii")
            except UnicodeEncodeError:
                raise HostDataError("host data line is not base64") from None
        line = line.strip()
        if not line:
            raise HostDataError("stdin is empty - expecting host data configuration")
        line = line.rstrip(b"=")
        line += b"=" * (-len(line) % 4)
        try:
            raw = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise HostDataError("host data line is not valid standard base64") from None
        return cls.from_json(raw)

    def to_dict(self) -> dict[str, Any]:
        """Rust struct order; ``None`` options are omitted (as the test harness writes them)."""
        d: dict[str, Any] = {k: getattr(self, k) for k in _HOSTDATA_STR_FIELDS[:8]}
        d["env_values"] = dict(self.env_values)
        d["instance_id"] = self.instance_id
        d["link_definitions"] = [ld.to_dict() for ld in self.link_definitions]
        d["cluster_issuers"] = list(self.cluster_issuers)
        if self.config_json is not None:
            d["config_json"] = self.config_json
        if self.default_rpc_timeout_ms is not None:
            d["default_rpc_timeout_ms"] = self.default_rpc_timeout_ms
        d["structured_logging"] = self.structured_logging
        if self.log_level is not None:
            d["log_level"] = self.log_level
        return d

    def to_json(self) -> bytes:
        return pack_json(self.to_dict())

    def to_stdin_line(self, padded: bool = True) -> bytes:
        """The line a host writes: padded base64 + LF (OTP) or unpadded + CRLF (harness)."""
        encoded = base64.b64encode(self.to_json())
        if padded:
            return encoded + b"\n"
        return encoded.rstrip(b"=") + b"\r\n"

    @property
    def is_test_mode(self) -> bool:
        return self.host_id == TEST_MODE_HOST_ID

    @property
    def nats_url(self) -> str:
        """NATS address for a Python client (the OTP host sends ``host:port`` without scheme)."""
        return normalize_nats_url(self.lattice_rpc_url) or DEFAULT_NATS_URL

    def credentials(self) -> tuple[str, str] | None:
        """``(jwt, seed)`` for JWT+nkey auth, ``None`` if anonymous; half-configured is an error."""
        jwt = self.lattice_rpc_user_jwt.strip()
        seed = self.lattice_rpc_user_seed.strip()
        if jwt and seed:
            return jwt, seed
        if jwt or seed:
            raise HostDataError(
                "lattice_rpc_user_jwt and lattice_rpc_user_seed must be set together"
            )
        return None

    def __repr__(self) -> str:
        # The user seed and invocation seed are secrets: never let them reach a log line.
        return (
            f"HostData(host_id={self.host_id!r}, provider_key={self.provider_key!r}, "
            f"lattice_rpc_prefix={self.lattice_rpc_prefix!r}, link_name={self.link_name!r}, "
            f"lattice_rpc_url={self.lattice_rpc_url!r}, "
            f"links={len(self.link_definitions)}, cluster_issuers={self.cluster_issuers!r})"
        )
