"""Signed replication envelopes: only the lattice's own instances may speak. Pure.

The RPC path trusts an invocation only when a key in ``HostData.cluster_issuers`` signed it.
Replication uses the same trust root. Every instance signs what it sends with the host's
``invocation_seed`` (an OTP host's cluster seed ``SC…``, the test harness's server seed ``SN…``)
and accepts only envelopes signed by a key in ``cluster_issuers``. Two hosts of one lattice
therefore interoperate with no extra configuration, and nothing outside the lattice can inject
a change, pull a snapshot or stall a replay.

An envelope is fixed-size header plus the message body, which stays opaque here::

    MAGIC (3) | signer's raw Ed25519 key (32) | signature (64) | body

The signature covers ``MAGIC | signer | len(binding) (2, big-endian) | binding | body``. The
*binding* is what a message must not be moved away from: the reply subject of a request (so a
captured snapshot pull cannot be replayed to deliver the cache to someone else's inbox) and the
subject of a JetStream record (so a record cannot be copied onto another key). Messages that are
neither use an empty binding.

:func:`open_envelope` checks the length, the header, the signer and the signature, in that
order and in time linear in the size, before anyone looks at the body. Its only exception is
:class:`UntrustedMessage`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing

from contract.nkeys import KeyPair, NKeyError, decode_public_key

#: ``0xc1`` is the one byte msgpack never uses, so an unsigned (msgpack) message from an older
#: version can never be mistaken for an envelope.
MAGIC = b"\xc1kv"
SIGNER_BYTES = 32
SIGNATURE_BYTES = 64
HEADER_BYTES = len(MAGIC) + SIGNER_BYTES + SIGNATURE_BYTES
#: Reply subjects and record subjects are far shorter; NATS itself limits subjects.
MAX_BINDING_BYTES = 4096


class UntrustedMessage(ValueError):
    """An envelope that is unsigned, badly signed, or signed by a key we do not trust."""


class TrustError(ValueError):
    """The host gave us no usable key to sign with (an operator problem, reported at start)."""


@dataclass(frozen=True, slots=True)
class Trust:
    """Our signing key and the signers we accept (the lattice's cluster issuers)."""

    signer: KeyPair = field(repr=False)
    trusted: frozenset[bytes]
    #: Public nkeys of :attr:`trusted`, for messages that name a refused signer.
    trusted_keys: tuple[str, ...] = ()
    #: Our raw 32-byte public key, put in every envelope: decoded once here, because decoding
    #: the nkey (base32 and a CRC) per message cost a third of sealing one.
    raw_signer: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "raw_signer", decode_public_key(self.signer.public_key)[1])

    @classmethod
    def from_host(cls, invocation_seed: str, cluster_issuers: Iterable[str]) -> Trust:
        """Build from HostData's ``invocation_seed`` and ``cluster_issuers``.

        Raises :class:`TrustError` without the seed in its text when the seed is missing or
        malformed. Issuers that are not valid public keys are skipped: the RPC path would
        never match them either.
        """
        if not invocation_seed:
            raise TrustError("HostData has no invocation_seed to sign replication messages with")
        try:
            signer = KeyPair.from_seed(invocation_seed)
        except NKeyError:
            raise TrustError("HostData's invocation_seed is not a valid nkey seed") from None
        raw_keys, names = set(), []
        for issuer in cluster_issuers:
            try:
                raw_keys.add(decode_public_key(issuer)[1])
            except NKeyError:
                continue
            names.append(issuer)
        return cls(signer, frozenset(raw_keys), tuple(names))

    @property
    def signs_as_trusted(self) -> bool:
        """Whether our own key is one we accept (else peers of this lattice refuse us too)."""
        return self.raw_signer in self.trusted


def _signed_bytes(signer: bytes, binding: bytes, body: bytes) -> bytes:
    return b"".join((MAGIC, signer, len(binding).to_bytes(2, "big"), binding, body))


def seal(trust: Trust, body: bytes, binding: str = "") -> bytes:
    """``body`` in an envelope signed with our key, bound to ``binding`` (see module doc)."""
    raw_binding = binding.encode()
    if len(raw_binding) > MAX_BINDING_BYTES:
        raise ValueError("binding too long")
    signer = trust.raw_signer
    signature = trust.signer.sign(_signed_bytes(signer, raw_binding, body))
    return b"".join((MAGIC, signer, signature, body))


class Verifier:
    """Opens envelopes signed by trusted keys; caches one ``VerifyKey`` per trusted signer."""

    __slots__ = ("_keys", "max_bytes")

    def __init__(self, trust: Trust, max_bytes: int) -> None:
        self._keys = {raw: nacl.signing.VerifyKey(raw) for raw in trust.trusted}
        self.max_bytes = max_bytes

    def open(self, data: bytes, binding: str = "") -> bytes:
        """The body of a trusted envelope, or :class:`UntrustedMessage`."""
        if len(data) > self.max_bytes:
            raise UntrustedMessage(f"message of {len(data)} bytes is over the limit")
        if len(data) < HEADER_BYTES or not data.startswith(MAGIC):
            raise UntrustedMessage("unsigned message")
        signer = data[len(MAGIC) : len(MAGIC) + SIGNER_BYTES]
        key = self._keys.get(signer)
        if key is None:
            raise UntrustedMessage("signed by a key outside cluster_issuers")
        raw_binding = binding.encode()
        if len(raw_binding) > MAX_BINDING_BYTES:
            raise UntrustedMessage("binding too long")
        signature = data[len(MAGIC) + SIGNER_BYTES : HEADER_BYTES]
        body = data[HEADER_BYTES:]
        try:
            key.verify(_signed_bytes(signer, raw_binding, body), signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise UntrustedMessage("bad signature") from None
        return body
