"""provider.replication.signing: envelopes only the lattice's own keys can make. Pure."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contract.nkeys import KeyPair
from provider.replication import messages as m
from provider.replication.signing import (
    HEADER_BYTES,
    Trust,
    TrustError,
    UntrustedMessage,
    Verifier,
    seal,
)
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
