"""Every invocation the provider must refuse (protocol spec §6-§7), with its exact error text.

Each forged call is a ``KeyValue.Set`` that would overwrite a key; after the refusal a legitimate
Get shows the key unchanged, so "refused" also means "had no effect". One provider process
serves the module; tests use their own keys and actors.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from contract.claims import encode_jwt, invocation_hash
from contract.codec import pack
from contract.keyvalue import GetResponse
from contract.nkeys import KeyPair
from contract.wire import Invocation, InvocationResponse
from wasmbus_testkit import KeyValueHost as FakeHost

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared_host(module_fake_host_factory: Callable[..., Awaitable[FakeHost]]) -> FakeHost:
    return await module_fake_host_factory()


@pytest.fixture
def host(shared_host: FakeHost, attach_log: Any) -> FakeHost:
    assert shared_host.process is not None
    attach_log("provider stderr", shared_host.process.stderr_path)
    return shared_host


# -- helpers -------------------------------------------------------------------------------


def set_call(host: FakeHost, key: str, **kw: Any) -> Invocation:
    """A validly signed Set of ``key`` to "forged" (tests then break one thing about it)."""
    return host.invocation(
        "KeyValue.Set", pack({"key": key, "value": "forged", "expires": 0}), **kw
    )


def claims_of(inv: Invocation) -> dict[str, Any]:
    segment = inv.encoded_claims.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def corrupt_signature(token: str) -> str:
    """Change the signature's first base64url character (all 6 of its bits are significant,
    unlike the last one's), keeping the token well-formed."""
    head, body, sig = token.split(".")
    return f"{head}.{body}.{'B' if sig[0] != 'B' else 'C'}{sig[1:]}"


def resign(inv: Invocation, signer: KeyPair, **changes: Any) -> Invocation:
    """Re-sign ``inv``'s claims with ``signer`` after applying ``changes`` (None deletes)."""
    claims = claims_of(inv)
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    inv.encoded_claims = encode_jwt(signer, claims)
    return inv


async def refused_without_effect(host: FakeHost, key: str, inv: Invocation) -> str:
    """Send a forged Set of ``key``; assert it failed cleanly and ``key`` still holds its
    original value. Returns the error text."""
    await host.kv.set(key, "original")
    response = await host.send(inv)
    assert response.error is not None, "forged invocation was accepted"
    assert response.msg == b""
    assert response.content_length == 0
    assert response.invocation_id == inv.id
    assert await host.kv.get(key) == GetResponse("original", True)
    return response.error


# -- claims (spec §7.3) ---------------------------------------------------------------------


async def test_tampered_signature_is_rejected(host: FakeHost) -> None:
    """Changing the signature bytes → ``Invocation claims signature invalid``."""
    inv = set_call(host, "sec:sig")
    inv.encoded_claims = corrupt_signature(inv.encoded_claims)
    assert await refused_without_effect(host, "sec:sig", inv) == (
        "Invocation claims signature invalid"
    )


async def test_claims_naming_the_cluster_but_signed_by_another_key_are_rejected(
    host: FakeHost,
) -> None:
    """An attacker's key cannot sign claims whose ``iss`` is the trusted cluster key."""
    inv = set_call(host, "sec:impersonate")
    attacker = KeyPair.generate("cluster")
    resign(inv, attacker, iss=host.issuer.public_key)
    assert await refused_without_effect(host, "sec:impersonate", inv) == (
        "Invocation claims signature invalid"
    )


@pytest.mark.parametrize("kind", ["cluster", "server", "module", "service"])
async def test_validly_signed_by_an_untrusted_issuer_is_rejected(host: FakeHost, kind: str) -> None:
    """Valid claims from any key not in cluster_issuers (another cluster, a host, an actor…)
    → ``Issuer of this invocation is not in list of cluster issuers``."""
    key = f"sec:issuer:{kind}"
    inv = set_call(host, key, signer=KeyPair.generate(kind))
    assert await refused_without_effect(host, key, inv) == (
        "Issuer of this invocation is not in list of cluster issuers"
    )


async def test_host_key_is_not_a_trusted_issuer(host: FakeHost) -> None:
    """The provider's own host key signs nothing: only the cluster key is trusted (OTP)."""
    inv = set_call(host, "sec:hostkey", signer=host.keys.host)
    assert await refused_without_effect(host, "sec:hostkey", inv) == (
        "Issuer of this invocation is not in list of cluster issuers"
    )


async def test_message_changed_after_signing_is_rejected(host: FakeHost) -> None:
    """A different argument than the one signed → hash mismatch, with both hashes shown."""
    inv = set_call(host, "sec:msg")
    signed_hash = claims_of(inv)["wascap"]["hash"]
    inv.msg = pack({"key": "sec:msg", "value": "tampered", "expires": 0})
    computed = invocation_hash(
        inv.origin.url(), f"{inv.target.url()}/{inv.operation}", inv.operation, inv.msg
    )
    error = await refused_without_effect(host, "sec:msg", inv)
    assert error.startswith("Invocation hash does not match signed claims hash (")
    assert error == (
        f"Invocation hash does not match signed claims hash ({signed_hash} / {computed})"
    )


async def test_claims_hash_in_lowercase_hex_is_rejected(host: FakeHost) -> None:
    """The right digest in lowercase hex is still a mismatch: wasmbus-rpc compares the
    uppercase hex strings exactly, so a case-insensitive compare would accept a token no
    real host accepts."""
    inv = set_call(host, "sec:lowerhash")
    wascap = claims_of(inv)["wascap"]
    upper = wascap["hash"]
    assert upper == upper.upper() and upper != upper.lower()
    wascap["hash"] = upper.lower()
    resign(inv, host.issuer, wascap=wascap)
    assert await refused_without_effect(host, "sec:lowerhash", inv) == (
        f"Invocation hash does not match signed claims hash ({upper.lower()} / {upper})"
    )


async def test_operation_changed_after_signing_is_rejected(host: FakeHost) -> None:
    """Claims for a Get cannot carry a Set with the same argument bytes."""
    await host.kv.set("sec:op", "original")
    inv = host.invocation("KeyValue.Get", pack("sec:op"))
    inv.operation = "KeyValue.Del"
    response = await host.send(inv)
    assert response.error is not None
    assert response.error.startswith("Invocation hash does not match signed claims hash (")
    assert await host.kv.get("sec:op") == GetResponse("original", True)


async def test_claims_replayed_for_another_actor_are_rejected(host: FakeHost) -> None:
    """Claims bind the origin: swapping in another (linked) actor breaks the hash."""
    other = KeyPair.generate("module")
    await host.link(other)
    inv = set_call(host, "sec:replay")
    inv.origin = type(inv.origin)(other.public_key, "", "")
    error = await refused_without_effect(host, "sec:replay", inv)
    assert error.startswith("Invocation hash does not match signed claims hash (")


async def test_expired_claims_are_rejected(host: FakeHost) -> None:
    """``exp`` in the past → ``Invocation claims token expired``."""
    inv = resign(set_call(host, "sec:exp"), host.issuer, exp=int(time.time()) - 60)
    assert await refused_without_effect(host, "sec:exp", inv) == "Invocation claims token expired"


async def test_claims_not_yet_valid_are_rejected(host: FakeHost) -> None:
    """``nbf`` in the future → ``Attempt to use invocation before claims token allows``."""
    inv = resign(set_call(host, "sec:nbf"), host.issuer, nbf=int(time.time()) + 3600)
    assert await refused_without_effect(host, "sec:nbf", inv) == (
        "Attempt to use invocation before claims token allows"
    )


async def test_claims_with_future_exp_and_past_nbf_are_accepted(host: FakeHost) -> None:
    """A time window that contains "now" is fine: the checks are not over-eager."""
    now = int(time.time())
    inv = resign(set_call(host, "sec:window"), host.issuer, exp=now + 3600, nbf=now - 60)
    response = await host.send(inv)
    assert response.error is None
    assert await host.kv.get("sec:window") == GetResponse("forged", True)


@pytest.mark.parametrize("host_id", ["bogus", "", "C" * 55, "MABC"])
async def test_bad_host_id_is_rejected(host: FakeHost, host_id: str) -> None:
    """A host_id that neither starts with N nor is 56 long → ``Invalid host ID …: '<id>'``."""
    key = f"sec:hostid:{len(host_id)}:{host_id[:1]}"
    inv = set_call(host, key, host_id=host_id)
    assert await refused_without_effect(host, key, inv) == (
        f"Invalid host ID on invocation: '{host_id}'"
    )


@pytest.mark.parametrize("host_id", ["N", "Nonsense", "X" * 56])
async def test_host_id_check_is_bug_compatible_with_wasmbus_rpc(
    host: FakeHost, host_id: str
) -> None:
    """wasmbus-rpc rejects only ids failing *both* tests (``&&`` for ``||``): these pass."""
    inv = set_call(host, f"sec:hostid-ok:{host_id[:2]}", host_id=host_id)
    response = await host.send(inv)
    assert response.error is None


async def test_missing_claims_are_rejected(host: FakeHost) -> None:
    """No token at all → ``JWT error: invalid token format``."""
    inv = set_call(host, "sec:noclaims")
    inv.encoded_claims = ""
    assert await refused_without_effect(host, "sec:noclaims", inv) == (
        "JWT error: invalid token format"
    )


async def test_claims_without_wascap_metadata_are_rejected(host: FakeHost) -> None:
    """Validly signed claims that bind nothing → ``No wascap metadata found on claims``."""
    inv = resign(set_call(host, "sec:nowascap"), host.issuer, wascap=None)
    assert await refused_without_effect(host, "sec:nowascap", inv) == (
        "No wascap metadata found on claims"
    )


async def test_claims_for_another_target_url_are_rejected(host: FakeHost) -> None:
    """Right hash, but ``wascap.target_url`` names another link → target URL mismatch."""
    inv = set_call(host, "sec:url")
    wascap = claims_of(inv)["wascap"]
    real_url = wascap["target_url"]
    wascap["target_url"] = real_url.replace("/default/", "/other/")
    resign(inv, host.issuer, wascap=wascap)
    assert await refused_without_effect(host, "sec:url", inv) == (
        "Invocation claims and invocation target URL do not match: "
        f"{wascap['target_url']} != {real_url}"
    )


async def test_claims_for_another_origin_url_are_rejected(host: FakeHost) -> None:
    """Right hash, but ``wascap.origin_url`` names another actor → origin URL mismatch."""
    inv = set_call(host, "sec:origin")
    wascap = claims_of(inv)["wascap"]
    wascap["origin_url"] = f"wasmbus://{KeyPair.generate('module').public_key}"
    resign(inv, host.issuer, wascap=wascap)
    assert await refused_without_effect(host, "sec:origin", inv) == (
        "Invocation claims and invocation origin URL do not match"
    )


# -- provider checks (spec §6 step 4) ----------------------------------------------------------


async def test_wrong_target_is_rejected(host: FakeHost) -> None:
    """Correctly signed for another provider's key → ``target key mismatch: <key> != <host>``
    (the SDK prints the host id on the right-hand side)."""
    other_provider = KeyPair.generate("service").public_key
    inv = set_call(host, "sec:target", target_key=other_provider)
    assert await refused_without_effect(host, "sec:target", inv) == (
        f"target key mismatch: {other_provider} != {host.host_id}"
    )


async def test_unlinked_actor_is_rejected(host: FakeHost) -> None:
    """A validly signed call from an actor without a link → ``unlinked actor: '<key>'``."""
    stranger = KeyPair.generate("module")
    inv = set_call(host, "sec:unlinked", actor=stranger)
    assert await refused_without_effect(host, "sec:unlinked", inv) == (
        f"unlinked actor: '{stranger.public_key}'"
    )


async def test_actor_is_unlinked_again_after_link_del(host: FakeHost) -> None:
    """Link → calls work; ``linkdefs.del`` → the same actor's calls are refused again."""
    actor = KeyPair.generate("module")
    await host.link(actor)
    client = host.client_for(actor)
    await client.set("sec:relink", "by linked actor")
    await host.unlink(actor)

    inv = set_call(host, "sec:relink", actor=actor)
    response = await host.send(inv)
    assert response.error == f"unlinked actor: '{actor.public_key}'"
    read = await host.send(host.invocation("KeyValue.Get", pack("sec:relink"), actor=actor))
    assert read.error == f"unlinked actor: '{actor.public_key}'"
    assert await host.kv.get("sec:relink") == GetResponse("by linked actor", True)


async def test_checks_run_in_spec_order(host: FakeHost) -> None:
    """Claims first, then issuer, then target, then link: the first failure is reported."""
    stranger = KeyPair.generate("module")
    other_provider = KeyPair.generate("service").public_key
    msg = pack("sec:order")

    def call(**kw: Any) -> Invocation:
        return host.invocation("KeyValue.Get", msg, actor=stranger, **kw)

    async def error_of(inv: Invocation) -> str | None:
        response: InvocationResponse = await host.send(inv)
        return response.error

    untrusted = KeyPair.generate("cluster")
    broken = call(signer=untrusted, target_key=other_provider)
    broken.encoded_claims = corrupt_signature(broken.encoded_claims)
    assert await error_of(broken) == "Invocation claims signature invalid"
    assert await error_of(call(signer=untrusted, target_key=other_provider)) == (
        "Issuer of this invocation is not in list of cluster issuers"
    )
    assert await error_of(call(target_key=other_provider)) == (
        f"target key mismatch: {other_provider} != {host.host_id}"
    )
    assert await error_of(call()) == f"unlinked actor: '{stranger.public_key}'"
