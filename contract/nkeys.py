"""NATS nkeys: Ed25519 keys in their base32 + CRC16 text form (protocol spec §7.4).

wasmCloud identifies every party by an nkey: actors (``M…``), providers (``V…``), hosts
(``N…``), clusters (``C…``). Invocation claims are signed with a cluster or server seed and the
provider verifies them with the key embedded in the ``iss`` nkey, so decoding must be strict —
a key with a bad checksum or an unknown prefix is rejected rather than guessed at.

The PyPI ``nkeys`` package rejects the module/service prefixes wasmCloud uses, so this module
implements the (small) encoding directly on top of PyNaCl.
"""

from __future__ import annotations

import base64
import binascii
import functools
from enum import StrEnum

import nacl.exceptions
import nacl.signing

__all__ = [
    "PREFIX_ACCOUNT",
    "PREFIX_CLUSTER",
    "PREFIX_MODULE",
    "PREFIX_OPERATOR",
    "PREFIX_SEED",
    "PREFIX_SERVER",
    "PREFIX_SERVICE",
    "PREFIX_USER",
    "KeyKind",
    "KeyPair",
    "NKeyError",
    "decode_public_key",
    "verify_key_for",
    "verify_signature",
]

PREFIX_ACCOUNT = 0  # 'A'
PREFIX_CLUSTER = 2 << 3  # 'C'
PREFIX_MODULE = 12 << 3  # 'M' — actors
PREFIX_SERVER = 13 << 3  # 'N' — hosts
PREFIX_OPERATOR = 14 << 3  # 'O'
PREFIX_SEED = 18 << 3  # 'S'
PREFIX_USER = 20 << 3  # 'U'
PREFIX_SERVICE = 21 << 3  # 'V' — capability providers

PUBLIC_KEY_LENGTH = 56
SEED_LENGTH = 58


class KeyKind(StrEnum):
    """The role encoded in an nkey's prefix byte (values are plain strings)."""

    ACCOUNT = "account"
    CLUSTER = "cluster"
    MODULE = "module"
    SERVER = "server"
    OPERATOR = "operator"
    USER = "user"
    SERVICE = "service"


_PREFIX_OF_KIND: dict[KeyKind, int] = {
    KeyKind.ACCOUNT: PREFIX_ACCOUNT,
    KeyKind.CLUSTER: PREFIX_CLUSTER,
    KeyKind.MODULE: PREFIX_MODULE,
    KeyKind.SERVER: PREFIX_SERVER,
    KeyKind.OPERATOR: PREFIX_OPERATOR,
    KeyKind.USER: PREFIX_USER,
    KeyKind.SERVICE: PREFIX_SERVICE,
}
_KIND_OF_PREFIX: dict[int, KeyKind] = {v: k for k, v in _PREFIX_OF_KIND.items()}


class NKeyError(ValueError):
    """A string is not a valid nkey of the expected form."""


def _crc16_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC16_TABLE = _crc16_table()


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0, unreflected) — the nkeys checksum."""
    crc = 0
    table = _CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def _encode(raw: bytes) -> str:
    raw += crc16_xmodem(raw).to_bytes(2, "little")
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def _decode(text: str, expected_length: int, what: str) -> bytes:
    """Base32-decode ``text`` and check its CRC; returns the payload without the CRC."""
    if not isinstance(text, str):
        raise NKeyError(f"invalid {what}: expected a string")
    if len(text) != expected_length:
        raise NKeyError(f"invalid {what}: length {len(text)}, expected {expected_length}")
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise NKeyError(f"invalid {what}: not base32") from None
    if (len(text) * 5) % 8 and base64.b32encode(raw).decode("ascii").rstrip("=") != text:
        raise NKeyError(f"invalid {what}: non-canonical base32 padding bits")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "little")
    if crc16_xmodem(body) != crc:
        raise NKeyError(f"invalid {what}: checksum mismatch")
    return body


def decode_public_key(public_key: str) -> tuple[str, bytes]:
    """Return ``(kind, raw 32-byte Ed25519 key)`` for a public nkey, or raise ``NKeyError``."""
    body = _decode(public_key, PUBLIC_KEY_LENGTH, "public key")
    kind = _KIND_OF_PREFIX.get(body[0])
    if kind is None:
        raise NKeyError(f"invalid public key: unknown prefix byte {body[0]:#04x}")
    return kind, body[1:]


@functools.lru_cache(maxsize=256)
def verify_key_for(public_key: str) -> nacl.signing.VerifyKey:
    """Cached PyNaCl ``VerifyKey`` for a public nkey.

    Decoding is deterministic, so caching the key object (never a verification result) is safe;
    a provider sees the same handful of cluster issuers on every call. Invalid keys raise
    ``NKeyError`` and are not cached.
    """
    return nacl.signing.VerifyKey(decode_public_key(public_key)[1])


def verify_signature(public_key: str, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``.

    A malformed *signature* is simply "not valid" (False); a malformed *public key* raises
    ``NKeyError`` because it points at a configuration or programming error, not forged data.
    """
    key = verify_key_for(public_key)
    try:
        key.verify(data, signature)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def _kind(kind: str) -> KeyKind:
    try:
        return KeyKind(kind)
    except ValueError:
        raise NKeyError(f"unknown key kind {kind!r}") from None


class KeyPair:
    """An Ed25519 signing key with its nkey identity.

    ``repr``/``str`` show only the kind and public key: seeds are secrets and must never end up
    in logs, tracebacks or test output.
    """

    __slots__ = ("_kind", "_public_key", "_signing_key")

    def __init__(self, kind: str, raw_seed: bytes) -> None:
        """Build from a raw 32-byte Ed25519 seed; prefer ``from_seed``/``generate``."""
        self._kind = _kind(kind)
        if len(raw_seed) != 32:
            raise NKeyError("raw seed must be 32 bytes")
        self._signing_key = nacl.signing.SigningKey(bytes(raw_seed))
        self._public_key = _encode(
            bytes([_PREFIX_OF_KIND[self._kind]]) + bytes(self._signing_key.verify_key)
        )

    @classmethod
    def from_seed(cls, seed: str) -> KeyPair:
        """Parse an ``S…`` seed string (58 characters)."""
        body = _decode(seed, SEED_LENGTH, "seed")
        if body[0] & 0xF8 != PREFIX_SEED:
            raise NKeyError("invalid seed: missing seed prefix")
        prefix = ((body[0] & 0x07) << 5) | ((body[1] & 0xF8) >> 3)
        kind = _KIND_OF_PREFIX.get(prefix)
        if kind is None:
            raise NKeyError(f"invalid seed: unknown key type prefix {prefix:#04x}")
        return cls(kind, body[2:])

    @classmethod
    def generate(cls, kind: str) -> KeyPair:
        """A fresh random key of the given kind (e.g. ``"server"`` for a fake host)."""
        return cls(kind, bytes(nacl.signing.SigningKey.generate()))

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def seed(self) -> str:
        """The ``S…`` seed string. Secret: do not log it."""
        prefix = _PREFIX_OF_KIND[self._kind]
        head = bytes([PREFIX_SEED | (prefix >> 5), (prefix & 0x1F) << 3])
        return _encode(head + bytes(self._signing_key))

    def sign(self, data: bytes) -> bytes:
        """Detached 64-byte Ed25519 signature of ``data``."""
        return self._signing_key.sign(data).signature

    def __repr__(self) -> str:
        return f"KeyPair(kind={self._kind.value!r}, public_key={self._public_key!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyPair):
            return NotImplemented
        return self._public_key == other._public_key and self._kind == other._kind

    def __hash__(self) -> int:
        return hash(self._public_key)
