"""contract.claims: wascap-compatible signing and the §7.3 validation steps with their texts."""

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from contract.claims import (
    MAX_TOKEN_BYTES,
    ClaimsError,
    encode_jwt,
    invocation_hash,
    issuer_not_trusted_error,
    make_signed_invocation,
    sign_invocation_claims,
    target_mismatch_error,
    unlinked_actor_error,
    validate_invocation,
)
from contract.nkeys import KeyPair
from contract.wire import Invocation, WasmCloudEntity

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "vectors.json").read_text())
V = {v["name"]: v for v in DATA["vectors"]}
KEYS = DATA["keys"]
IAT = DATA["constants"]["iat"]
CLUSTER = KeyPair.from_seed(KEYS["cluster"]["seed"])
HARNESS = KeyPair.from_seed(KEYS["test_harness_host"]["seed"])
ACTOR = WasmCloudEntity(KEYS["actor"]["public_key"], "", "")
PROVIDER = WasmCloudEntity(KEYS["provider"]["public_key"], "default", "wasmcloud:keyvalue")

ENVELOPES = [name for name, v in V.items() if "envelope" in v]
HEADER = "eyJ0eXAiOiJqd3QiLCJhbGciOiJFZDI1NTE5In0"  # {"typ":"jwt","alg":"Ed25519"}
SIGNED = ["invocation.host_style.get", "invocation.rpcclient_style.increment"]


def _claims_of(token: str) -> dict[str, Any]:
    seg = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))


def _host_style() -> Invocation:
    return Invocation.decode(bytes.fromhex(V["invocation.host_style.get"]["hex"]))


# ------------------------------------------------------------------------ signing ----


def test_invocation_hash_vector() -> None:
    jwt = V["invocation.host_style.get"]["jwt"]
    inv = _host_style()
    assert (
        invocation_hash(jwt["origin_url"], jwt["target_url"], inv.operation, inv.msg)
        == (jwt["invocation_hash"])
    )
    preimage = bytes.fromhex(jwt["hash_preimage_hex"])
    assert preimage == (jwt["origin_url"] + jwt["target_url"] + inv.operation).encode() + inv.msg


@pytest.mark.parametrize("name", ENVELOPES)
def test_kv_envelope_jwt_reproduced(name: str) -> None:
    env = V[name]["envelope"]
    inv = Invocation.decode(bytes.fromhex(env["invocation_hex"]))
    claims = _claims_of(env["invocation_jwt"])
    token = sign_invocation_claims(
        CLUSTER,
        origin=inv.origin,
        target=inv.target,
        operation=inv.operation,
        msg=inv.msg,
        invocation_id=inv.id,
        issued_at=claims["iat"],
        jti=claims["jti"],
    )
    assert token == env["invocation_jwt"] == inv.encoded_claims


@pytest.mark.parametrize(("name", "signer"), [(SIGNED[0], CLUSTER), (SIGNED[1], HARNESS)])
def test_invocation_vector_jwt_reproduced(name: str, signer: KeyPair) -> None:
    jwt = V[name]["jwt"]
    inv = Invocation.decode(bytes.fromhex(V[name]["hex"]))
    claims = _claims_of(jwt["token"])
    assert json.dumps(claims, separators=(",", ":")) == jwt["claims_json"]
    token = sign_invocation_claims(
        signer,
        origin=inv.origin,
        target=inv.target,
        operation=inv.operation,
        msg=inv.msg,
        invocation_id=inv.id,
        issued_at=IAT,
        jti=claims["jti"],
    )
    assert token == jwt["token"]
    if "header_json" in jwt:
        assert token.split(".")[0] == base64.urlsafe_b64encode(
            jwt["header_json"].encode()
        ).decode().rstrip("=")


def test_default_jti_and_iat() -> None:
    token = sign_invocation_claims(
        CLUSTER, origin=ACTOR, target=PROVIDER, operation="KeyValue.Get", msg=b"", invocation_id="i"
    )
    claims = _claims_of(token)
    assert len(claims["jti"]) == 22 and claims["jti"].isalnum()
    assert isinstance(claims["iat"], int) and claims["iat"] > IAT
    assert list(claims) == ["jti", "iat", "iss", "sub", "wascap", "wascap_revision"]
    assert list(claims["wascap"]) == ["target_url", "origin_url", "hash"]
    assert claims["wascap_revision"] == 3


def test_make_signed_invocation_validates() -> None:
    inv = make_signed_invocation(CLUSTER, ACTOR, PROVIDER, "KeyValue.Get", b"\xa1k")
    assert inv.host_id == CLUSTER.public_key
    assert inv.content_length == 2
    assert len(inv.id) == 36 and inv.id.count("-") == 4
    claims = validate_invocation(Invocation.decode(inv.encode()))
    assert claims["sub"] == inv.id and claims["iss"] == CLUSTER.public_key
    explicit = make_signed_invocation(HARNESS, ACTOR, PROVIDER, "X", b"", "abc", host_id="NHOST")
    assert (explicit.id, explicit.host_id) == ("abc", "NHOST")
    validate_invocation(explicit)


# --------------------------------------------------------------------- validation ----


@pytest.mark.parametrize("name", ENVELOPES)
def test_kv_envelopes_validate(name: str) -> None:
    inv = Invocation.decode(bytes.fromhex(V[name]["envelope"]["invocation_hex"]))
    claims = validate_invocation(inv, now=IAT)
    assert claims["iss"] == CLUSTER.public_key
    assert claims["sub"] == inv.id


@pytest.mark.parametrize("name", SIGNED)
def test_signed_vectors_validate(name: str) -> None:
    inv = Invocation.decode(bytes.fromhex(V[name]["hex"]))
    claims = validate_invocation(inv, now=IAT)
    assert claims["wascap"]["hash"] == V[name]["jwt"]["invocation_hash"]
    validate_invocation(inv)  # no exp/nbf: valid at any time


def _resign(inv: Invocation, signer: KeyPair = CLUSTER, header: dict[str, Any] | None = None,
            **claim_changes: Any) -> Invocation:  # fmt: skip
    """Copy of ``inv`` with its claims changed (None deletes a key) and validly re-signed."""
    claims = _claims_of(inv.encoded_claims)
    for key, value in claim_changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    inv = Invocation.decode(inv.encode())
    inv.encoded_claims = encode_jwt(signer, claims, header)
    return inv


def _error(inv: Invocation, now: float = IAT) -> str:
    with pytest.raises(ClaimsError) as excinfo:
        validate_invocation(inv, now=now)
    return str(excinfo.value)


def test_tampered_msg_hash_mismatch() -> None:
    inv = _host_style()
    inv.msg = b"\xa4blue"
    expected = invocation_hash(
        inv.origin.url(), f"{inv.target.url()}/{inv.operation}", inv.operation, inv.msg
    )
    claimed = V["invocation.host_style.get"]["jwt"]["invocation_hash"]
    assert _error(inv) == (
        f"Invocation hash does not match signed claims hash ({claimed} / {expected})"
    )


def test_tampered_operation_hash_mismatch() -> None:
    inv = _host_style()
    inv.operation = "KeyValue.Del"
    assert _error(inv).startswith("Invocation hash does not match signed claims hash (")


def test_tampered_signature() -> None:
    inv = _host_style()
    head, claims, sig = inv.encoded_claims.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    inv.encoded_claims = (
        f"{head}.{claims}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"
    )
    assert _error(inv) == "Invocation claims signature invalid"


def test_tampered_claims_segment() -> None:
    inv = _host_style()
    head, _, sig = inv.encoded_claims.split(".")
    forged = _claims_of(inv.encoded_claims)
    forged["sub"] = "other"
    seg = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    inv.encoded_claims = f"{head}.{seg}.{sig}"
    assert _error(inv) == "Invocation claims signature invalid"


def test_signed_by_other_key_claiming_cluster_issuer() -> None:
    inv = _resign(_host_style(), signer=HARNESS)  # iss still says the cluster key
    assert _error(inv) == "Invocation claims signature invalid"


def test_short_signature_is_invalid_not_a_crash() -> None:
    inv = _host_style()
    inv.encoded_claims = inv.encoded_claims.rsplit(".", 1)[0] + ".AAAA"
    assert _error(inv) == "Invocation claims signature invalid"


def test_expired() -> None:
    inv = _resign(_host_style(), exp=IAT - 1)
    assert _error(inv) == "Invocation claims token expired"
    assert validate_invocation(inv, now=IAT - 1)  # exp == now is still valid


def test_expired_is_checked_before_the_signature() -> None:
    inv = _resign(_host_style(), signer=HARNESS, exp=IAT - 1)
    assert _error(inv) == "Invocation claims token expired"


def test_not_yet_valid() -> None:
    inv = _resign(_host_style(), nbf=IAT + 10)
    assert _error(inv) == "Attempt to use invocation before claims token allows"
    assert validate_invocation(inv, now=IAT + 10)


def test_signature_is_checked_before_nbf() -> None:
    inv = _resign(_host_style(), signer=HARNESS, nbf=IAT + 10)
    assert _error(inv) == "Invocation claims signature invalid"


def test_missing_wascap() -> None:
    assert _error(_resign(_host_style(), wascap=None)) == "No wascap metadata found on claims"


def test_null_wascap_counts_as_missing() -> None:
    claims = _claims_of(_host_style().encoded_claims)
    claims["wascap"] = None
    inv = _host_style()
    inv.encoded_claims = encode_jwt(CLUSTER, claims)
    assert _error(inv) == "No wascap metadata found on claims"


def test_bad_algorithm() -> None:
    inv = _resign(_host_style(), header={"typ": "jwt", "alg": "HS256"})
    assert _error(inv) == "Invalid JWT algorithm. WASCAP only supports Ed25519"


def test_bad_type() -> None:
    inv = _resign(_host_style(), header={"typ": "JWT", "alg": "Ed25519"})
    assert _error(inv) == "JWT error: Invalid header"


def test_alternative_header_layout_is_accepted() -> None:
    inv = _resign(_host_style(), header={"alg": "Ed25519", "typ": "jwt", "kid": "x"})
    assert validate_invocation(inv, now=IAT)


@pytest.mark.parametrize("host_id", ["", "bad", "C" * 55, "M" * 57])
def test_bad_host_id(host_id: str) -> None:
    inv = _host_style()
    inv.host_id = host_id
    assert _error(inv) == f"Invalid host ID on invocation: '{host_id}'"


@pytest.mark.parametrize("host_id", ["N", "Nanything", "C" * 56, KEYS["host"]["public_key"]])
def test_host_id_check_is_bug_for_bug(host_id: str) -> None:
    inv = _host_style()
    inv.host_id = host_id
    assert validate_invocation(inv, now=IAT)


def test_wrong_target_url() -> None:
    inv = _host_style()
    good = inv.encoded_claims
    wrong = "wasmbus://wasmcloud/keyvalue/other/" + PROVIDER.public_key + "/KeyValue.Get"
    wascap = dict(_claims_of(good)["wascap"], target_url=wrong)
    inv = _resign(inv, wascap=wascap)
    computed = V["invocation.host_style.get"]["jwt"]["target_url"]
    assert _error(inv) == (
        f"Invocation claims and invocation target URL do not match: {wrong} != {computed}"
    )


def test_wrong_origin_url() -> None:
    inv = _host_style()
    wascap = dict(_claims_of(inv.encoded_claims)["wascap"], origin_url="wasmbus://MOTHER")
    assert _error(_resign(inv, wascap=wascap)) == (
        "Invocation claims and invocation origin URL do not match"
    )


def test_hash_is_checked_before_host_id_and_urls() -> None:
    inv = _host_style()
    inv.msg = b"\xc0"
    inv.host_id = "bad"
    assert _error(inv).startswith("Invocation hash does not match")


@pytest.mark.parametrize(
    ("claims", "text"),
    [
        ({"iss": ""}, "Invalid JWT. WASCAP requires an issuer claim to be present"),
        ({"sub": ""}, "Invalid JWT. WASCAP requires a sub claim to be present"),
        ({"iss": "CNOTAKEY"}, "Encryption error: invalid public key: length 8, expected 56"),
        ({"iss": None}, "Serialization error: missing field `iss`"),
        ({"jti": None}, "Serialization error: missing field `jti`"),
        ({"iat": None}, "Serialization error: missing field `iat`"),
        ({"iat": "now"}, "Serialization error: invalid type for `iat`: string 'now', expected u64"),
        ({"exp": -1}, "Serialization error: invalid value for `exp`: integer `-1`, expected u64"),
        ({"nbf": 1.5}, "Serialization error: invalid type for `nbf`: floating point `1.5`"),
        ({"wascap": {"hash": "x"}}, "Serialization error: missing field `wascap.target_url`"),
        ({"wascap": []}, "Serialization error: invalid type for `wascap`: sequence of length 0"),
        ({"wascap_revision": True}, "Serialization error: invalid type for `wascap_revision`"),
    ],
)
def test_malformed_claims(claims: dict[str, Any], text: str) -> None:
    inv = _resign(_host_style(), **claims)
    assert _error(inv).startswith(text)


def _raw_token(inv: Invocation, token: str) -> Invocation:
    inv.encoded_claims = token
    return inv


@pytest.mark.parametrize(
    ("token", "text"),
    [
        ("", "JWT error: invalid token format"),
        ("a.b", "JWT error: invalid token format"),
        ("a.b.c.d", "JWT error: invalid token format"),
        ("e30.e30.!!!", "Decode error: invalid base64url in JWT signature segment"),
        ("e30.e30.A", "Decode error: invalid base64url in JWT signature segment"),
        ("e3+.e30.AAAA", "Decode error: invalid base64url in JWT header segment"),
        ("e30.e3=.AAAA", "Serialization error: missing field `typ`"),  # header first
        (f"{HEADER}.e3=.AAAA", "Decode error: invalid base64url in JWT claims segment"),
        (f"{HEADER}.W10.AAAA", "Serialization error: JWT claims is not a JSON object"),
        ("_w.e30.AAAA", "UTF8 error: invalid start byte in JWT header"),
        ("bm9wZQ.e30.AAAA", "Serialization error: Expecting value"),
        ("W10.e30.AAAA", "Serialization error: JWT header is not a JSON object"),
        ("e30.e30.AAAA", "Serialization error: missing field `typ`"),
        ("eyJ0eXAiOiJqd3QifQ.e30.AAAA", "Serialization error: missing field `alg`"),
        (
            "eyJ0eXAiOjEsImFsZyI6IkVkMjU1MTkifQ.e30.AAAA",
            "Serialization error: invalid type for `typ`",
        ),
    ],
)
def test_malformed_tokens(token: str, text: str) -> None:
    assert _error(_raw_token(_host_style(), token)).startswith(text)


def test_nan_is_not_a_json_number() -> None:
    head = V["invocation.host_style.get"]["jwt"]["signing_input"].split(".")[0]
    claims = base64.urlsafe_b64encode(b'{"exp":NaN}').decode().rstrip("=")
    text = _error(_raw_token(_host_style(), f"{head}.{claims}.AAAA"))
    assert text.startswith("Serialization error: invalid number NaN")


def test_oversize_token() -> None:
    token = "a" * (MAX_TOKEN_BYTES + 1)
    assert _error(_raw_token(_host_style(), token)) == (
        f"JWT error: token too large ({MAX_TOKEN_BYTES + 1} bytes > {MAX_TOKEN_BYTES})"
    )


def test_non_string_token_and_fields_never_crash() -> None:
    inv = _host_style()
    inv.encoded_claims = None  # type: ignore[assignment]
    assert _error(inv) == "JWT error: invalid token format"
    inv = _host_style()
    inv.msg = "not bytes"  # type: ignore[assignment]
    assert _error(inv).startswith("Invalid invocation:")
    inv = _host_style()
    inv.host_id = None  # type: ignore[assignment]
    assert _error(inv) == "Invalid host ID on invocation: 'None'"


def test_claims_error_is_not_a_value_error() -> None:
    assert not issubclass(ClaimsError, ValueError)


def test_provider_check_texts() -> None:
    assert issuer_not_trusted_error() == (
        "Issuer of this invocation is not in list of cluster issuers"
    )
    assert target_mismatch_error("VKEY", "NHOST") == "target key mismatch: VKEY != NHOST"
    actor = KEYS["actor"]["public_key"]
    assert unlinked_actor_error(actor) == f"unlinked actor: '{actor}'"
    assert (
        unlinked_actor_error(actor) == V["invocation_response.error.unlinked"]["decoded"]["error"]
    )


def test_right_digest_in_lowercase_hex_is_a_mismatch() -> None:
    """wasmbus-rpc compares the uppercase hex exactly; the same digest in lowercase is refused."""
    inv = _host_style()
    upper = V["invocation.host_style.get"]["jwt"]["invocation_hash"]
    wascap = dict(_claims_of(inv.encoded_claims)["wascap"], hash=upper.lower())
    assert _error(_resign(inv, wascap=wascap)) == (
        f"Invocation hash does not match signed claims hash ({upper.lower()} / {upper})"
    )
