"""provider.replication.signing: envelopes only the lattice's own keys can make. Pure."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg

from contract.nkeys import KeyPair
from provider.replication import messages as m
from provider.replication.channel import SignedChannel
from provider.replication.signing import (
    HEADER_BYTES,
    MAC_HEADER_BYTES,
    MAC_MAGIC,
    MAX_TAGS,
    TAG_ENTRY_BYTES,
    TAG_FIXED_BYTES,
    TAG_MAGIC,
    Trust,
    TrustError,
    UntrustedMessage,
    Verifier,
    seal,
    seal_for,
    seal_tagged,
)
from provider.store import BUCKETS
from provider.store.codec import new_node_id

CLUSTER = KeyPair.generate("cluster")
TRUST = Trust.from_host(CLUSTER.seed, [CLUSTER.public_key])
OUTSIDER = KeyPair.generate("cluster")
VERIFIER = Verifier(TRUST, 2**20)


def test_a_sealed_body_opens_with_its_binding_only() -> None:
    body = m.encode(m.Message(m.Kind.SNAPSHOT_HELLO, new_node_id()))
    sealed = seal(TRUST, body, "_INBOX.a.1")
    assert VERIFIER.open(sealed, "_INBOX.a.1") == body
    with pytest.raises(UntrustedMessage, match="bad signature"):
        VERIFIER.open(sealed, "_INBOX.b.1")
    with pytest.raises(UntrustedMessage, match="bad signature"):
        VERIFIER.open(sealed)


def test_unsigned_foreign_and_tampered_envelopes_are_refused() -> None:
    body = b"\x80"
    outsider = Trust.from_host(OUTSIDER.seed, [OUTSIDER.public_key])
    with pytest.raises(UntrustedMessage, match="unsigned"):
        VERIFIER.open(body)
    with pytest.raises(UntrustedMessage, match="outside cluster_issuers"):
        VERIFIER.open(seal(outsider, body))
    tampered = bytearray(seal(TRUST, body + b"x"))
    tampered[-1] ^= 1
    with pytest.raises(UntrustedMessage, match="bad signature"):
        VERIFIER.open(bytes(tampered))
    with pytest.raises(UntrustedMessage, match="over the limit"):
        Verifier(TRUST, 100).open(seal(TRUST, b"y" * 200))


def test_trust_needs_a_seed_and_says_whether_we_sign_as_trusted() -> None:
    with pytest.raises(TrustError):
        Trust.from_host("", [CLUSTER.public_key])
    with pytest.raises(TrustError) as info:
        Trust.from_host("SCnot-a-seed", [CLUSTER.public_key])
    assert "SCnot" not in str(info.value)  # never echo a secret
    assert TRUST.signs_as_trusted
    assert not Trust.from_host(CLUSTER.seed, [OUTSIDER.public_key, "junk"]).signs_as_trusted


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.text(max_size=40))
def test_arbitrary_bytes_raise_only_untrusted_message(data: bytes, binding: str) -> None:
    with contextlib.suppress(UntrustedMessage):
        VERIFIER.open(data, binding)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_trusted_garbage_bodies_raise_only_the_decoders_error(body: bytes) -> None:
    """Defence in depth: a trusted signer's garbage still fails only as a MessageError."""
    opened = VERIFIER.open(seal(TRUST, body))
    assert opened == body and len(seal(TRUST, body)) == HEADER_BYTES + len(body)
    with contextlib.suppress(m.MessageError):
        m.decode(opened)


# ---------------------------------------------------------------------- pair MACs (acks)
WRITER = KeyPair.generate("server")
ACKER = KeyPair.generate("server")
THIRD = KeyPair.generate("server")
ISSUERS = [WRITER.public_key, ACKER.public_key, THIRD.public_key]
AT_WRITER = Trust.from_host(WRITER.seed, ISSUERS)
AT_ACKER = Trust.from_host(ACKER.seed, ISSUERS)
AT_THIRD = Trust.from_host(THIRD.seed, ISSUERS)
WRITER_OPENS = Verifier(AT_WRITER, 2**20)
ACK_SUBJECT = "kvcache.lc.p.ack.writer"
ACK = m.encode(m.Message(m.Kind.ACK, new_node_id(), acks=[7]))


def test_a_pair_mac_opens_for_its_recipient_with_the_senders_key() -> None:
    sealed = seal_for(AT_ACKER, AT_WRITER.raw_signer, ACK, ACK_SUBJECT)
    assert sealed.startswith(MAC_MAGIC) and len(sealed) == MAC_HEADER_BYTES + len(ACK)
    assert WRITER_OPENS.open_mac(sealed, ACK_SUBJECT) == (AT_ACKER.raw_signer, ACK)
    # Both ends derive the same pair key, and each derives it once.
    assert AT_ACKER.pairs.get(AT_WRITER.raw_signer) == AT_WRITER.pairs.get(AT_ACKER.raw_signer)
    back = seal_for(AT_WRITER, AT_ACKER.raw_signer, ACK, ACK_SUBJECT)
    assert Verifier(AT_ACKER, 2**20).open_mac(back, ACK_SUBJECT) == (AT_WRITER.raw_signer, ACK)


def test_hosts_sharing_one_key_mac_to_themselves() -> None:
    """One cluster key on every host: sender, recipient and both ends of the pair are one key."""
    sealed = seal_for(TRUST, TRUST.raw_signer, ACK, ACK_SUBJECT)
    assert VERIFIER.open_mac(sealed, ACK_SUBJECT) == (TRUST.raw_signer, ACK)
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        VERIFIER.open_mac(sealed, "kvcache.lc.p.ack.another-writer")


def test_a_mac_from_a_key_outside_cluster_issuers_is_refused() -> None:
    # The outsider knows the writer's public key and does the DH with its own key: a
    # well-formed MAC, from a key nobody trusts.
    outsider = Trust.from_host(OUTSIDER.seed, [OUTSIDER.public_key, WRITER.public_key])
    sealed = seal_for(outsider, AT_WRITER.raw_signer, ACK, ACK_SUBJECT)
    with pytest.raises(UntrustedMessage, match="outside cluster_issuers"):
        WRITER_OPENS.open_mac(sealed, ACK_SUBJECT)
    # Naming a trusted sender does not help: its MAC was made with the outsider's pair key.
    renamed = MAC_MAGIC + AT_ACKER.raw_signer + sealed[len(MAC_MAGIC) + 32 :]
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(renamed, ACK_SUBJECT)
    # Nor does a MAC made with no key at all.
    unkeyed = hashlib.blake2b(ACK, digest_size=32).digest()
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(MAC_MAGIC + AT_ACKER.raw_signer + unkeyed + ACK, ACK_SUBJECT)
    with pytest.raises(ValueError, match="no pair key"):
        seal_for(AT_ACKER, outsider.raw_signer, ACK)


def test_a_mac_made_for_another_recipient_or_reflected_is_refused() -> None:
    for_third = seal_for(AT_ACKER, AT_THIRD.raw_signer, ACK, ACK_SUBJECT)
    assert Verifier(AT_THIRD, 2**20).open_mac(for_third, ACK_SUBJECT)[1] == ACK
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(for_third, ACK_SUBJECT)
    # The pair key is symmetric; the direction is not: the writer's own MAC for the acker,
    # reflected back to the writer (as it stands, or naming the acker as sender), fails.
    reflected = seal_for(AT_WRITER, AT_ACKER.raw_signer, ACK, ACK_SUBJECT)
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(reflected, ACK_SUBJECT)
    swapped = MAC_MAGIC + AT_ACKER.raw_signer + reflected[len(MAC_MAGIC) + 32 :]
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(swapped, ACK_SUBJECT)


def test_tampered_truncated_and_oversized_macs_are_refused() -> None:
    sealed = seal_for(AT_ACKER, AT_WRITER.raw_signer, ACK, ACK_SUBJECT)
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(sealed, ACK_SUBJECT + "x")  # another binding
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(sealed)
    for index in (len(MAC_MAGIC) + 32, MAC_HEADER_BYTES - 1, MAC_HEADER_BYTES, len(sealed) - 1):
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(UntrustedMessage, match="bad MAC"):
            WRITER_OPENS.open_mac(bytes(tampered), ACK_SUBJECT)
    with pytest.raises(UntrustedMessage, match="bad MAC"):
        WRITER_OPENS.open_mac(sealed + b"\x00", ACK_SUBJECT)
    for size in range(len(sealed)):
        with pytest.raises(UntrustedMessage):
            WRITER_OPENS.open_mac(sealed[:size], ACK_SUBJECT)
    with pytest.raises(UntrustedMessage, match="over the limit"):
        Verifier(AT_WRITER, 100).open_mac(seal_for(AT_ACKER, AT_WRITER.raw_signer, b"y" * 200), "")
    with pytest.raises(UntrustedMessage, match="binding too long"):
        WRITER_OPENS.open_mac(sealed, "x" * 5000)


def test_signatures_and_macs_are_never_taken_for_each_other() -> None:
    with pytest.raises(UntrustedMessage, match="only a signature"):
        WRITER_OPENS.open_signed(seal_for(AT_ACKER, AT_WRITER.raw_signer, ACK))
    with pytest.raises(UntrustedMessage, match="no pair MAC"):
        WRITER_OPENS.open_mac(seal(AT_ACKER, ACK))
    assert WRITER_OPENS.open_signed(seal(AT_ACKER, ACK)) == (AT_ACKER.raw_signer, ACK)


def test_a_trusted_key_that_gives_no_pair_key_is_refused_both_ways() -> None:
    identity = b"\x01" + bytes(31)  # the Ed25519 neutral element: small order, no DH
    trust = Trust(WRITER, frozenset({AT_WRITER.raw_signer, identity}))
    assert trust.pairs.get(identity) is None
    with pytest.raises(ValueError, match="no pair key"):
        seal_for(trust, identity, ACK)
    forged = MAC_MAGIC + identity + bytes(32) + ACK
    with pytest.raises(UntrustedMessage, match="outside cluster_issuers"):
        Verifier(trust, 2**20).open_mac(forged)


_PREFIXES = [b"", MAC_MAGIC, MAC_MAGIC + AT_ACKER.raw_signer, MAC_MAGIC + bytes(32), TAG_MAGIC]
_PREFIXES += [TAG_MAGIC + AT_ACKER.raw_signer, TAG_MAGIC + AT_ACKER.raw_signer + b"\x01"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(_PREFIXES), st.binary(max_size=400), st.text(max_size=40))
def test_arbitrary_bytes_raise_only_untrusted_message_from_every_opener(
    prefix: bytes, data: bytes, binding: str
) -> None:
    for opener in (WRITER_OPENS.open_mac, WRITER_OPENS.open_signed, WRITER_OPENS.open_tagged):
        with contextlib.suppress(UntrustedMessage):
            opener(prefix + data, binding)


# ---------------------------------------------------------------------- tagged change batches
EVENTS = "kvcache.lc.p.events"
BATCH = m.encode(m.Message(m.Kind.CHANGES, new_node_id(), seq=1))


def test_a_tagged_batch_opens_for_every_trusted_key_and_says_who_sent_it() -> None:
    sealed = seal_tagged(AT_WRITER, BATCH, EVENTS)
    assert sealed.startswith(TAG_MAGIC)
    assert len(sealed) == TAG_FIXED_BYTES + len(ISSUERS) * TAG_ENTRY_BYTES + len(BATCH)
    for reader in (AT_WRITER, AT_ACKER, AT_THIRD):  # the writer's own key is trusted too
        assert Verifier(reader, 2**20).open_tagged(sealed, EVENTS) == (AT_WRITER.raw_signer, BATCH)
    # Hosts sharing one key: one tag, for that key.
    shared = seal_tagged(TRUST, BATCH, EVENTS)
    assert len(shared) == TAG_FIXED_BYTES + TAG_ENTRY_BYTES + len(BATCH)
    assert VERIFIER.open_tagged(shared, EVENTS) == (TRUST.raw_signer, BATCH)


def test_tags_are_bound_to_their_subject_and_bytes() -> None:
    sealed = seal_tagged(AT_WRITER, BATCH, EVENTS)
    reader = Verifier(AT_ACKER, 2**20)
    with pytest.raises(UntrustedMessage, match="no valid tag"):
        reader.open_tagged(sealed, "kvcache.lc.other-cache.events")
    recipients = [raw for raw, _ in AT_WRITER.pairs.recipients()]
    own = TAG_FIXED_BYTES + recipients.index(AT_ACKER.raw_signer) * TAG_ENTRY_BYTES
    body = len(sealed) - len(BATCH)
    # Sender, count, the reader's own entry and the body all count; the other readers' tags
    # are theirs to check.
    for index in [*range(len(TAG_MAGIC), own + TAG_ENTRY_BYTES), *range(body, len(sealed))]:
        if TAG_FIXED_BYTES <= index < own:
            continue
        tampered = bytearray(sealed)
        tampered[index] ^= 1
        with pytest.raises(UntrustedMessage):
            reader.open_tagged(bytes(tampered), EVENTS)
    other = bytearray(sealed)
    other[body - 1 if own == TAG_FIXED_BYTES else TAG_FIXED_BYTES + 8] ^= 1
    assert reader.open_tagged(bytes(other), EVENTS)[1] == BATCH
    for size in range(len(sealed)):
        with contextlib.suppress(UntrustedMessage):  # a cut inside the body: bad tag
            reader.open_tagged(sealed[:size], EVENTS)
            raise AssertionError(f"a batch cut to {size} bytes opened")
    with pytest.raises(UntrustedMessage, match="over the limit"):
        Verifier(AT_ACKER, 100).open_tagged(seal_tagged(AT_WRITER, b"y" * 200), "")


def test_tags_from_outsiders_or_for_other_keys_are_refused() -> None:
    # An outsider that knows every public key tags with its own pair keys: none matches ours.
    outsider = Trust.from_host(OUTSIDER.seed, [OUTSIDER.public_key, *ISSUERS])
    forged = seal_tagged(outsider, BATCH, EVENTS)
    with pytest.raises(UntrustedMessage, match="outside cluster_issuers"):
        Verifier(AT_ACKER, 2**20).open_tagged(forged, EVENTS)
    renamed = TAG_MAGIC + AT_WRITER.raw_signer + forged[len(TAG_MAGIC) + 32 :]
    with pytest.raises(UntrustedMessage, match="no valid tag"):
        Verifier(AT_ACKER, 2**20).open_tagged(renamed, EVENTS)
    # A trusted instance cannot speak for another one to a third: the tag it could make for
    # the third, naming the writer as sender, needs the writer's or the third's private key.
    from_acker = seal_tagged(AT_ACKER, BATCH, EVENTS)
    as_writer = TAG_MAGIC + AT_WRITER.raw_signer + from_acker[len(TAG_MAGIC) + 32 :]
    with pytest.raises(UntrustedMessage, match="no valid tag"):
        Verifier(AT_THIRD, 2**20).open_tagged(as_writer, EVENTS)
    # Only the tags for the writer and the acker: the third finds none of its own.
    without_third = Trust.from_host(WRITER.seed, [WRITER.public_key, ACKER.public_key])
    with pytest.raises(UntrustedMessage, match="no valid tag"):
        Verifier(AT_THIRD, 2**20).open_tagged(seal_tagged(without_third, BATCH, EVENTS), EVENTS)


def test_a_malformed_tag_list_is_refused_before_any_mac() -> None:
    head = TAG_MAGIC + AT_WRITER.raw_signer
    reader = Verifier(AT_ACKER, 2**20)
    for count, entries in ((0, 0), (MAX_TAGS + 1, MAX_TAGS + 1), (3, 2)):
        data = head + bytes((count,)) + bytes(entries * TAG_ENTRY_BYTES)
        with pytest.raises(UntrustedMessage, match="malformed tag list"):
            reader.open_tagged(data, EVENTS)
    with pytest.raises(UntrustedMessage, match="no tags"):
        reader.open_tagged(seal(AT_WRITER, BATCH), EVENTS)


def test_with_more_trusted_keys_than_tags_a_batch_is_signed() -> None:
    many = [KeyPair.generate("server").public_key for _ in range(MAX_TAGS)]
    trust = Trust.from_host(WRITER.seed, [WRITER.public_key, *many])
    sealed = seal_tagged(trust, BATCH, EVENTS)
    assert Verifier(AT_ACKER, 2**20).open_signed(sealed, EVENTS) == (AT_WRITER.raw_signer, BATCH)


def test_signatures_and_tags_are_never_taken_for_each_other() -> None:
    sealed = seal_tagged(AT_WRITER, BATCH, EVENTS)
    with pytest.raises(UntrustedMessage, match="only a signature"):
        WRITER_OPENS.open_signed(sealed, EVENTS)
    with pytest.raises(UntrustedMessage, match="no pair MAC"):
        WRITER_OPENS.open_mac(sealed, EVENTS)


# ---------------------------------------------------------------------- the channel's side
class _Log:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})


def _channel(trust: Trust) -> tuple[SignedChannel, dict[str, int]]:
    counters: dict[str, int] = {}
    return SignedChannel(trust, counters, _Log()), counters


def _msg(subject: str, data: bytes) -> Msg:
    return Msg(cast(Any, None), subject=subject, data=data)


def test_the_channel_takes_a_mac_only_for_acks_where_it_expects_them() -> None:
    channel, counters = _channel(AT_WRITER)
    ack = _msg(ACK_SUBJECT, seal_for(AT_ACKER, AT_WRITER.raw_signer, ACK, ACK_SUBJECT))
    opened = channel.open(ack, (m.Kind.ACK,), mac_kinds=m.MAC_KINDS)
    assert opened is not None and opened.acks == [7] and opened.signer == AT_ACKER.raw_signer
    # Signed acks (older peers, or no pair key) still open there, and say who signed.
    signed = channel.open(_msg(ACK_SUBJECT, seal(AT_ACKER, ACK)), mac_kinds=m.MAC_KINDS)
    assert signed is not None and signed.signer == AT_ACKER.raw_signer
    assert counters == {"untrusted_messages": 0, "dropped_messages": 0}
    # Where no MAC is expected, even a valid one is refused before decoding.
    assert channel.open(ack, (m.Kind.ACK,)) is None
    assert counters["untrusted_messages"] == 1
    # A MAC is not enough for any other kind, even on the ack subject.
    others = set(m.Kind) - m.MAC_KINDS
    for kind in others:
        message = m.Message(kind, new_node_id(), digests=[0] * BUCKETS, buckets=[0])
        message.sub_digests = [{}]
        body = m.encode(message)
        assert m.decode(body).type == kind
        mac = _msg(ACK_SUBJECT, seal_for(AT_ACKER, AT_WRITER.raw_signer, body, ACK_SUBJECT))
        assert channel.open(mac, mac_kinds=m.MAC_KINDS) is None, kind
    assert counters["untrusted_messages"] == 1 + len(others)
    # Bound to the subject it was published on.
    moved = _msg("kvcache.lc.p.ack.other", ack.data)
    assert channel.open(moved, mac_kinds=m.MAC_KINDS) is None
    assert counters == {"untrusted_messages": 2 + len(others), "dropped_messages": 0}


class _Recorder:
    """A connection that keeps what is published on its one subject."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        self.sent: list[bytes] = []

    async def publish(self, subject: str, data: bytes) -> None:
        assert subject == self.subject
        self.sent.append(data)


def _recording(channel: SignedChannel, subject: str) -> list[bytes]:
    recorder = _Recorder(subject)
    channel.nc = cast(Any, recorder)
    return recorder.sent


async def test_the_channel_macs_for_a_known_recipient_and_signs_otherwise() -> None:
    channel, _ = _channel(AT_ACKER)
    sent = _recording(channel, ACK_SUBJECT)
    await channel.publish_to(ACK_SUBJECT, ACK, AT_WRITER.raw_signer)
    await channel.publish_to(ACK_SUBJECT, ACK, b"")
    assert WRITER_OPENS.open_mac(sent[0], ACK_SUBJECT) == (AT_ACKER.raw_signer, ACK)
    assert WRITER_OPENS.open_signed(sent[1]) == (AT_ACKER.raw_signer, ACK)


def test_the_channel_takes_tags_only_for_change_batches_where_it_expects_them() -> None:
    channel, counters = _channel(AT_ACKER)
    batch = _msg(EVENTS, seal_tagged(AT_WRITER, BATCH, EVENTS))
    opened = channel.open(batch, (m.Kind.CHANGES,), tag_kinds=m.TAG_KINDS)
    assert opened is not None and opened.seq == 1 and opened.signer == AT_WRITER.raw_signer
    signed = _msg(EVENTS, seal(AT_WRITER, BATCH))  # older writers, or too many keys to tag
    assert channel.open(signed, (m.Kind.CHANGES,), tag_kinds=m.TAG_KINDS) is not None
    assert counters == {"untrusted_messages": 0, "dropped_messages": 0}
    assert channel.open(batch, (m.Kind.CHANGES,)) is None  # no tags expected here
    digest = m.encode(m.Message(m.Kind.DIGEST, new_node_id(), digests=[0] * BUCKETS))
    tagged_digest = _msg(EVENTS, seal_tagged(AT_WRITER, digest, EVENTS))
    assert channel.open(tagged_digest, tag_kinds=m.TAG_KINDS) is None  # a digest must be signed
    assert counters == {"untrusted_messages": 2, "dropped_messages": 0}


async def test_the_channel_publishes_tagged_batches_bound_to_their_subject() -> None:
    channel, _ = _channel(AT_WRITER)
    sent = _recording(channel, EVENTS)
    await channel.publish_tagged(EVENTS, BATCH)
    assert Verifier(AT_THIRD, 2**20).open_tagged(sent[0], EVENTS) == (AT_WRITER.raw_signer, BATCH)
