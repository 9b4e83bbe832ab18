"""HostData and link definitions as the two kinds of wasmCloud host write them.

A provider is started by one of two hosts, and they differ in details a provider must tolerate
(protocol spec §2, §3, §8, §9, §14). :class:`HostStyle` names the two, and
:func:`build_host_data` builds the start-up document either would send:

* **OTP** (the Elixir host, ``HostStyle.OTP``): lattice ``default``, the host's ``N…`` key as
  host id, a cluster key ``C…`` as the only trusted issuer (and as ``invocation_seed``), msgpack
  link definitions and health messages, the HostData line padded and ended with ``\\n``.
* **test mode** (``HostStyle.TEST``, Rust's ``wasmcloud-test-util``): host id ``_TEST_``,
  lattice ``TEST``, a random server key ``N…`` as issuer, targets with an empty contract id,
  JSON link definitions and health messages, the HostData line unpadded and ended with ``\\r\\n``.

:class:`HostKeys` holds the identities of one fake lattice; seeds are secrets, never log them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from contract.nkeys import KeyPair
from contract.wire import (
    HEALTH_REQUEST,
    TEST_MODE_HEALTH_REQUEST,
    TEST_MODE_HOST_ID,
    HealthCheckResponse,
    HostData,
    LinkDefinition,
    shutdown_request,
)

__all__ = ["HostKeys", "HostStyle", "build_host_data", "link_definition", "shutdown_request"]


@dataclass
class HostKeys:
    """The identities of one fake lattice. Seeds are secrets: never log them."""

    cluster: KeyPair = field(default_factory=lambda: KeyPair.generate("cluster"))
    host: KeyPair = field(default_factory=lambda: KeyPair.generate("server"))
    provider: KeyPair = field(default_factory=lambda: KeyPair.generate("service"))
    actor: KeyPair = field(default_factory=lambda: KeyPair.generate("module"))
    #: The test harness's random server key: issuer and invocation seed in test mode.
    harness: KeyPair = field(default_factory=lambda: KeyPair.generate("server"))


class HostStyle(Enum):
    """Which host the fake plays; every difference between the two is a property here."""

    OTP = "otp"
    TEST = "test"

    @property
    def default_lattice(self) -> str:
        return "TEST" if self is HostStyle.TEST else "default"

    @property
    def padded(self) -> bool:
        """Whether the HostData line keeps its base64 ``=`` padding (and ends LF, not CRLF)."""
        return self is HostStyle.OTP

    @property
    def health_body(self) -> bytes:
        """The health request body: msgpack ``{"placeholder": true}`` (OTP) or JSON ``{}``."""
        return HEALTH_REQUEST if self is HostStyle.OTP else TEST_MODE_HEALTH_REQUEST

    def host_id(self, keys: HostKeys) -> str:
        return TEST_MODE_HOST_ID if self is HostStyle.TEST else keys.host.public_key

    def issuer(self, keys: HostKeys) -> KeyPair:
        """The key that signs invocations and is the only trusted cluster issuer."""
        return keys.harness if self is HostStyle.TEST else keys.cluster

    def target_contract_id(self, contract_id: str) -> str:
        """Contract id in invocation targets: the harness leaves it empty."""
        return "" if self is HostStyle.TEST else contract_id

    def encode_link(self, link: LinkDefinition) -> bytes:
        return link.encode_json() if self is HostStyle.TEST else link.encode_msgpack()

    def decode_health(self, data: bytes) -> HealthCheckResponse:
        if self is HostStyle.TEST:
            return HealthCheckResponse.decode_json(data)
        return HealthCheckResponse.decode_msgpack(data)


def link_definition(
    provider_key: str,
    actor_key: str,
    *,
    contract_id: str,
    link_name: str = "default",
    values: Mapping[str, str] | None = None,
) -> LinkDefinition:
    """The link between one actor and the provider, as the host publishes and lists it."""
    return LinkDefinition(
        actor_id=actor_key,
        provider_id=provider_key,
        link_name=link_name,
        contract_id=contract_id,
        values=dict(values or {}),
    )


def build_host_data(
    keys: HostKeys,
    nats_host_port: str,
    *,
    style: HostStyle = HostStyle.OTP,
    lattice: str | None = None,
    link_name: str = "default",
    links: Iterable[LinkDefinition] = (),
    config_json: str | None = None,
    structured_logging: bool = False,
    log_level: str | None = None,
) -> HostData:
    """The HostData ``style``'s host would write for ``keys.provider`` on ``lattice``.

    ``nats_host_port`` is ``host:port`` without a scheme, as both hosts send it. The instance id
    is a fresh UUIDv4 per call, as the OTP host picks one per process.
    """
    issuer = style.issuer(keys)
    return HostData(
        host_id=style.host_id(keys),
        lattice_rpc_prefix=lattice or style.default_lattice,
        link_name=link_name,
        lattice_rpc_url=nats_host_port,
        provider_key=keys.provider.public_key,
        invocation_seed=issuer.seed,
        env_values={},
        instance_id=str(uuid.uuid4()),
        link_definitions=list(links),
        cluster_issuers=[issuer.public_key],
        config_json=config_json,
        structured_logging=structured_logging,
        log_level=log_level,
    )
