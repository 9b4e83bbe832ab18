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

Pair MACs for messages with one recipient
-----------------------------------------

A write ack goes to exactly one instance: the writer of the batch or record it confirms. A
signature proves to *everyone* who spoke; an ack only has to prove it to that one writer, and
a message authentication code under a key only the two of them hold does exactly that, for a
fraction of the cost (the two Ed25519 operations of an ack were half of the crypto on the
``WRITE_ACK=peers`` write path). The trust root stays the same: both keys are the hosts'
Ed25519 keys, and a sender counts only when its key is in ``cluster_issuers``.

* **Pair key.** Both Ed25519 keys convert to X25519 (the birationally equivalent Montgomery
  form: libsodium's ``crypto_sign_ed25519_{sk,pk}_to_curve25519``). Static-static
  Diffie-Hellman gives both ends the same shared secret, which nobody else can compute without
  one of the two private keys. The pair key is ``BLAKE2b-256(key=shared, person=KEY_PERSON,
  low | high)``, where ``low``/``high`` are the two raw Ed25519 public keys in byte order: the
  same on both ends, and tied to the exact identities (the conversion drops the sign of the
  Edwards point, so two Ed25519 keys share one X25519 key; hashing the Ed25519 keys in keeps
  them apart). libsodium refuses small-order points and an all-zero result, so a key that
  cannot give a contributory secret gives no pair key at all (the sender then signs instead).
  Each instance derives a pair key once per trusted key and caches it: one cache entry per
  entry of ``cluster_issuers``, never one per message or per claimed sender.
* **Envelope**::

    MAC_MAGIC (3) | sender's raw Ed25519 key (32) | MAC (32) | body

  with ``MAC = BLAKE2b-256(key=pair key, person=MAC_PERSON,
  MAC_MAGIC | sender | recipient | len(binding) (2, big-endian) | binding | body)``. The
  recipient (the receiver's own key) is not sent: the receiver puts its own in, so a MAC made
  for another instance fails. Sender and recipient both enter the MAC although the pair key is
  symmetric, so a MAC one end made cannot be reflected back to it as if the other had made it.
  The binding is the subject the message is published on (the writer's own ack subject), so a
  captured ack cannot be moved to another writer, even when several hosts share one key.
  Different personalisations keep the key derivation and the MAC apart from each other and
  from anything else that may hash with the same secret.
* **What it guarantees.** Keyed BLAKE2b is a PRF: without the pair key, nobody can produce a
  valid MAC for any message, not even after seeing valid MACs for others. The pair key is known
  only to holders of one of the two private keys. So a receiver that accepts a MAC knows that
  a trusted key holder made it *for it*, for this subject and these bytes: for a message with
  one intended recipient, which is all an ack is, that is exactly what the signature told it.
  What a MAC does not do is convince a third party (the recipient could have made it too):
  so only point-to-point acks use it, and a receiver accepts it only for ack kinds, and only on
  its own ack subject (:mod:`.channel`). Everything else (batches, records, digests, repairs,
  snapshots, presence beacons, clock notices) stays signed, because every reader of those must
  be able to check them, or because they are rare enough not to matter.
* **Hosts sharing one key.** The hosts of one lattice often sign with one cluster key: then
  sender, recipient and both ends of the pair are that key, the DH is with oneself, and the
  guarantee is again "a holder of the trusted key made it", exactly as with a signature.

Tagged change batches: one pair MAC per trusted key
---------------------------------------------------

Live change batches are the one broadcast on the hot path: one per event-loop turn with
writes, read by every instance. Signing and checking each cost an Ed25519 operation (~20 µs to
sign, ~57 µs to check here), and on a small host the check of every batch by every peer was
what kept a replicated ``Set`` from answering within 1.2x a standalone one. Most lattices
trust one to a few cluster keys, so the sender can instead MAC the batch once for each trusted
key, with the same pair keys as acks; each receiver checks the one tag made for its own key.

* **Envelope**::

    TAG_MAGIC (3) | sender (32) | n (1) | n * (recipient id (8) | tag (32)) | body

  The recipient id is the first :data:`TAG_ID_BYTES` bytes of that recipient's raw key (a
  receiver tries each entry with its own id, at most :data:`MAX_TAGS`). With ``d =
  BLAKE2b-256(person=DIGEST_PERSON, body)``, computed once however many tags there are, each
  ``tag = BLAKE2b-256(key=pair key, person=TAG_PERSON, TAG_MAGIC | sender | recipient |
  len(binding) (2, big-endian) | binding | d)``. The binding is the subject (the events
  subject), so a captured batch cannot be moved onto another cache's subject.
* **What it guarantees.** To each receiver, what an ack MAC guarantees: a holder of a trusted
  key made these bytes for it, on this subject. A receiver cannot use its own tag to convince
  a third instance of anything: that one checks only the tag made with *its* pair key, which
  the first cannot compute. Hashing the body first is safe because BLAKE2b-256 is collision
  resistant; it keeps the cost at one pass over the body plus ``n`` short MACs.
* **When the sender signs instead.** With more than :data:`MAX_TAGS` trusted keys (a signature
  is then cheaper than the tags), or no usable pair key, a batch is signed as before; receivers
  accept both, and a tagged envelope only for change batches on the events subject.

:class:`Verifier` checks the length, the header, the signer (or sender) and the signature (or
MAC, compared in constant time), in that order and in time linear in the size, before anyone
looks at the body. Its only exception is :class:`UntrustedMessage`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field

import nacl.bindings
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

#: A pair-MAC envelope (one recipient; see the module doc). Also starts with ``0xc1``.
MAC_MAGIC = b"\xc1km"
MAC_BYTES = 32
MAC_HEADER_BYTES = len(MAC_MAGIC) + SIGNER_BYTES + MAC_BYTES
#: BLAKE2b personalisations (16 bytes each): pair-key derivation, and the MAC itself.
KEY_PERSON = b"kvcache-pairkey1"
MAC_PERSON = b"kvcache-ackmac-1"

#: A tagged envelope (one pair MAC per trusted key; see the module doc). Also starts with 0xc1.
TAG_MAGIC = b"\xc1kt"
#: How much of a recipient's raw key names its tag.
TAG_ID_BYTES = 8
TAG_ENTRY_BYTES = TAG_ID_BYTES + MAC_BYTES
#: Past this many trusted keys one signature costs less than the tags: the sender signs.
MAX_TAGS = 16
TAG_FIXED_BYTES = len(TAG_MAGIC) + SIGNER_BYTES + 1
TAG_PERSON = b"kvcache-tagmac-1"
DIGEST_PERSON = b"kvcache-tagbody1"


class UntrustedMessage(ValueError):
    """An envelope that is unsigned, badly signed, or signed by a key we do not trust."""


class TrustError(ValueError):
    """The host gave us no usable key to sign with (an operator problem, reported at start)."""


class PairKeys:
    """Our pair key with each trusted key, derived on first use and kept (one per issuer)."""

    __slots__ = ("_cache", "_ours", "_raw", "_recipients", "_secret", "_trusted")

    def __init__(self, ours: KeyPair, raw: bytes, trusted: frozenset[bytes]) -> None:
        self._ours = ours
        self._raw = raw
        self._trusted = trusted
        self._secret: bytes | None = None
        #: Trusted raw key -> pair key (``b""``: that key cannot give one).
        self._cache: dict[bytes, bytes] = {}
        self._recipients: tuple[tuple[bytes, bytes], ...] | None = None

    def recipients(self) -> tuple[tuple[bytes, bytes], ...]:
        """``(raw key, pair key)`` of every trusted key that gives one, in a fixed order."""
        if self._recipients is None:
            pairs = ((raw, self.get(raw)) for raw in sorted(self._trusted))
            self._recipients = tuple((raw, key) for raw, key in pairs if key is not None)
        return self._recipients

    def get(self, peer: bytes) -> bytes | None:
        """The pair key shared with trusted key ``peer``; None if untrusted or unusable."""
        key = self._cache.get(peer)
        if key is None:
            if peer not in self._trusted:
                return None
            key = self._cache[peer] = self._derive(peer)
        return key or None

    def _derive(self, peer: bytes) -> bytes:
        try:
            if self._secret is None:
                self._secret = _x25519_secret(self._ours, self._raw)
            public = nacl.signing.VerifyKey(peer).to_curve25519_public_key().encode()
            shared = nacl.bindings.crypto_scalarmult(self._secret, public)
        except (nacl.exceptions.CryptoError, ValueError, TypeError):
            return b""  # not a point of the main subgroup, or no contributory secret
        low, high = sorted((self._raw, peer))
        return hashlib.blake2b(low + high, key=shared, person=KEY_PERSON, digest_size=32).digest()


def _x25519_secret(pair: KeyPair, raw: bytes) -> bytes:
    """The X25519 private scalar of ``pair`` (whose raw public key is ``raw``)."""
    seed = pair.seed  # "S…": 2 prefix bytes, the 32-byte Ed25519 seed, a 2-byte CRC
    decoded = base64.b32decode(seed + "=" * (-len(seed) % 8))
    signing = nacl.signing.SigningKey(decoded[2:34])
    if bytes(signing.verify_key) != raw:
        raise ValueError("our seed does not match our public key")
    return signing.to_curve25519_private_key().encode()


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
    #: Our pair keys with the trusted keys, for acks (shared by everything using this trust).
    pairs: PairKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        raw = decode_public_key(self.signer.public_key)[1]
        object.__setattr__(self, "raw_signer", raw)
        object.__setattr__(self, "pairs", PairKeys(self.signer, raw, self.trusted))

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


def _binding(binding: str) -> bytes:
    raw = binding.encode()
    if len(raw) > MAX_BINDING_BYTES:
        raise ValueError("binding too long")
    return raw


def seal(trust: Trust, body: bytes, binding: str = "") -> bytes:
    """``body`` in an envelope signed with our key, bound to ``binding`` (see module doc)."""
    raw_binding = _binding(binding)
    signer = trust.raw_signer
    signature = trust.signer.sign(_signed_bytes(signer, raw_binding, body))
    return b"".join((MAGIC, signer, signature, body))


def _mac(key: bytes, sender: bytes, recipient: bytes, binding: bytes, body: bytes) -> bytes:
    return _keyed(key, MAC_PERSON, MAC_MAGIC, sender, recipient, binding, body)


def _tag(key: bytes, sender: bytes, recipient: bytes, binding: bytes, digest: bytes) -> bytes:
    return _keyed(key, TAG_PERSON, TAG_MAGIC, sender, recipient, binding, digest)


def _keyed(
    key: bytes,
    person: bytes,
    magic: bytes,
    sender: bytes,
    recipient: bytes,
    binding: bytes,
    data: bytes,
) -> bytes:
    state = hashlib.blake2b(key=key, person=person, digest_size=MAC_BYTES)
    state.update(b"".join((magic, sender, recipient, len(binding).to_bytes(2, "big"))))
    state.update(binding)
    state.update(data)
    return state.digest()


def _body_digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, person=DIGEST_PERSON, digest_size=MAC_BYTES).digest()


def seal_for(trust: Trust, recipient: bytes, body: bytes, binding: str = "") -> bytes:
    """``body`` under a pair MAC only ``recipient`` (a trusted raw key) can check.

    For messages with that one recipient (acks). Raises ``ValueError`` when we share no pair
    key with ``recipient`` (not trusted, or not a usable key): sign with :func:`seal` then.
    """
    raw_binding = _binding(binding)
    key = trust.pairs.get(recipient)
    if key is None:
        raise ValueError("no pair key with that recipient")
    sender = trust.raw_signer
    return b"".join((MAC_MAGIC, sender, _mac(key, sender, recipient, raw_binding, body), body))


def seal_tagged(trust: Trust, body: bytes, binding: str = "") -> bytes:
    """``body`` with one pair MAC per trusted key, bound to ``binding`` (see the module doc).

    For change batches, which every instance reads. Signed (:func:`seal`) instead when there
    are more than :data:`MAX_TAGS` trusted keys, or none that gives a pair key.
    """
    recipients = trust.pairs.recipients()
    if not recipients or len(recipients) > MAX_TAGS:
        return seal(trust, body, binding)
    raw_binding = _binding(binding)
    sender = trust.raw_signer
    digest = _body_digest(body)
    parts = [TAG_MAGIC, sender, bytes((len(recipients),))]
    for raw, key in recipients:
        parts.append(raw[:TAG_ID_BYTES])
        parts.append(_tag(key, sender, raw, raw_binding, digest))
    parts.append(body)
    return b"".join(parts)


class Verifier:
    """Opens envelopes of trusted keys; caches one ``VerifyKey`` per trusted signer."""

    __slots__ = ("_keys", "_pairs", "_us", "max_bytes")

    def __init__(self, trust: Trust, max_bytes: int) -> None:
        self._keys = {raw: nacl.signing.VerifyKey(raw) for raw in trust.trusted}
        self._pairs = trust.pairs
        self._us = trust.raw_signer
        self.max_bytes = max_bytes

    def open(self, data: bytes, binding: str = "") -> bytes:
        """The body of a trusted signed envelope, or :class:`UntrustedMessage`."""
        return self.open_signed(data, binding)[1]

    def open_signed(self, data: bytes, binding: str = "") -> tuple[bytes, bytes]:
        """``(signer's raw key, body)`` of a trusted signed envelope, or UntrustedMessage."""
        self._check_size(data)
        if data.startswith((MAC_MAGIC, TAG_MAGIC)):
            raise UntrustedMessage("a pair MAC, where only a signature is accepted")
        if len(data) < HEADER_BYTES or not data.startswith(MAGIC):
            raise UntrustedMessage("unsigned message")
        signer = data[len(MAGIC) : len(MAGIC) + SIGNER_BYTES]
        key = self._keys.get(signer)
        if key is None:
            raise UntrustedMessage("signed by a key outside cluster_issuers")
        raw_binding = _untrusted_binding(binding)
        signature = data[len(MAGIC) + SIGNER_BYTES : HEADER_BYTES]
        body = data[HEADER_BYTES:]
        try:
            key.verify(_signed_bytes(signer, raw_binding, body), signature)
        except (nacl.exceptions.BadSignatureError, ValueError):
            raise UntrustedMessage("bad signature") from None
        return signer, body

    def open_mac(self, data: bytes, binding: str = "") -> tuple[bytes, bytes]:
        """``(sender's raw key, body)`` of a pair-MAC envelope made for us, or UntrustedMessage.

        Only for messages with us as their one recipient (acks): see the module doc.
        """
        sender, key = self._pair_sender(data, MAC_MAGIC, MAC_HEADER_BYTES, "pair MAC")
        raw_binding = _untrusted_binding(binding)
        mac = data[len(MAC_MAGIC) + SIGNER_BYTES : MAC_HEADER_BYTES]
        body = data[MAC_HEADER_BYTES:]
        if not hmac.compare_digest(mac, _mac(key, sender, self._us, raw_binding, body)):
            raise UntrustedMessage("bad MAC")
        return sender, body

    def open_tagged(self, data: bytes, binding: str = "") -> tuple[bytes, bytes]:
        """``(sender's raw key, body)`` of a tagged envelope with a valid tag for us, or
        UntrustedMessage. Only for change batches: see the module doc."""
        sender, key = self._pair_sender(data, TAG_MAGIC, TAG_FIXED_BYTES, "tags")
        count = data[TAG_FIXED_BYTES - 1]
        end = TAG_FIXED_BYTES + count * TAG_ENTRY_BYTES
        if not 0 < count <= MAX_TAGS or len(data) < end:
            raise UntrustedMessage("malformed tag list")
        raw_binding = _untrusted_binding(binding)
        ours, body = self._us[:TAG_ID_BYTES], data[end:]
        digest = b""
        for start in range(TAG_FIXED_BYTES, end, TAG_ENTRY_BYTES):
            if data[start : start + TAG_ID_BYTES] != ours:
                continue
            digest = digest or _body_digest(body)
            expected = _tag(key, sender, self._us, raw_binding, digest)
            if hmac.compare_digest(data[start + TAG_ID_BYTES : start + TAG_ENTRY_BYTES], expected):
                return sender, body
        raise UntrustedMessage("no valid tag for this instance")

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_bytes:
            raise UntrustedMessage(f"message of {len(data)} bytes is over the limit")

    def _pair_sender(
        self, data: bytes, magic: bytes, header: int, what: str
    ) -> tuple[bytes, bytes]:
        """The claimed sender of a MAC'd envelope (``magic``, at least ``header`` bytes) and our
        pair key with it; UntrustedMessage, naming ``what``, for anything else."""
        self._check_size(data)
        if len(data) < header or not data.startswith(magic):
            raise UntrustedMessage(f"no {what}")
        sender = data[len(magic) : len(magic) + SIGNER_BYTES]
        key = self._pairs.get(sender)
        if key is None:
            raise UntrustedMessage(f"{what} by a key outside cluster_issuers")
        return sender, key


def _untrusted_binding(binding: str) -> bytes:
    try:
        return _binding(binding)
    except ValueError:
        raise UntrustedMessage("binding too long") from None
