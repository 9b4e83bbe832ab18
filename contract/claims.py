"""Invocation claims: the signed JWT that proves an RPC came from a trusted host (spec §7).

Anyone who can publish on the lattice can send an Invocation; only a holder of a cluster (or
harness) seed can sign matching claims. The claims bind the call's origin, target, operation and
argument bytes through a SHA-256 hash, so a captured token cannot be replayed with a different
argument. ``validate_invocation`` reproduces wasmbus-rpc's checks step by step, with its error
texts, because actors see these strings.

Error texts, in check order (first failure wins):

====  ======================================================================================
step  ``str(ClaimsError)``
====  ======================================================================================
1     ``JWT error: invalid token format`` — not a string, not three ``.``-separated segments
1     ``JWT error: token too large (<n> bytes > 16384)`` — DoS bound (not in wascap)
1     ``Decode error: invalid base64url in JWT <signature|header|claims> segment``
1     ``UTF8 error: <detail>`` — header/claims segment is not UTF-8
1     ``Serialization error: <detail>`` — not JSON, not an object, missing/mistyped field
1     ``Invalid JWT algorithm. WASCAP only supports Ed25519`` — header ``alg`` ≠ ``Ed25519``
1     ``JWT error: Invalid header`` — header ``typ`` ≠ ``jwt`` (wascap's wording)
1     ``Invalid JWT. WASCAP requires an issuer claim to be present`` — empty ``iss``
1     ``Invalid JWT. WASCAP requires a sub claim to be present`` — empty ``sub``
1     ``Encryption error: <detail>`` — ``iss`` is not a valid public nkey
2     ``Invocation claims token expired``
3     ``Invocation claims signature invalid``
4     ``Attempt to use invocation before claims token allows``
5     ``No wascap metadata found on claims``
6     ``Invocation hash does not match signed claims hash (<claims> / <computed>)``
7     ``Invalid host ID on invocation: '<host_id>'``
8     ``Invocation claims and invocation target URL do not match: <claims> != <computed>``
9     ``Invocation claims and invocation origin URL do not match``
====  ======================================================================================

Step 1 order follows wascap's ``validate_token``: signature segment decoded first, then the
header, then the claims. Provider-side checks (trusted issuer, target key, linked actor; spec §6
step 4) need HostData and live state, so they are not here; their texts come from
``issuer_not_trusted_error`` and friends so every caller words them the same way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.exceptions

from contract import _fields as f
from contract.nkeys import KeyPair, NKeyError, verify_key_for
from contract.wire import Invocation, WasmCloudEntity

__all__ = [
    "MAX_TOKEN_BYTES",
    "WASCAP_REVISION",
    "ClaimsError",
    "PreparedClaims",
    "encode_jwt",
    "finish_claims",
    "invocation_hash",
    "issuer_not_trusted_error",
    "make_signed_invocation",
    "new_jti",
    "prepare_claims",
    "sign_claims",
    "sign_invocation_claims",
    "signature_valid",
    "target_mismatch_error",
    "unlinked_actor_error",
    "validate_invocation",
]

#: Upper bound on ``encoded_claims``. Real tokens are ~700 bytes; the bound keeps a hostile
#: envelope from making the provider base64/JSON-decode megabytes before failing.
MAX_TOKEN_BYTES = 16 * 1024

#: The claims format revision wascap writes into every token (invocations and providers).
WASCAP_REVISION = 3
_HEADER = {"typ": "jwt", "alg": "Ed25519"}
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_NUID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class ClaimsError(Exception):
    """Claims validation failed; ``str(err)`` is the exact text for ``InvocationResponse.error``."""


# ---------------------------------------------------------------------- encoding ----


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_segment(obj: Any) -> str:
    # serde_json output: compact, raw UTF-8, keys in insertion order.
    return _b64url(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


_HEADER_SEGMENT = _json_segment(_HEADER)


def new_jti() -> str:
    """22 random base62 characters — the shape of a NUID, which wascap uses for ``jti``.

    ``secrets.choice`` rather than ``byte % 62``: a modulo would favour the first characters.
    """
    return "".join(secrets.choice(_NUID_ALPHABET) for _ in range(22))


def invocation_hash(origin_url: str, target_url: str, operation: str, msg: bytes) -> str:
    """Uppercase hex SHA-256 of origin URL ‖ target URL ‖ operation ‖ msg (spec §7.2)."""
    h = hashlib.sha256(origin_url.encode())
    h.update(target_url.encode())
    h.update(operation.encode())
    h.update(msg)
    return h.hexdigest().upper()


def encode_jwt(
    signer: KeyPair, claims: dict[str, Any], header: dict[str, Any] | None = None
) -> str:
    """Sign arbitrary claims as a wascap-style JWT (tests use it to build hostile tokens)."""
    head = _HEADER_SEGMENT if header is None else _json_segment(header)
    signing_input = f"{head}.{_json_segment(claims)}"
    return f"{signing_input}.{_b64url(signer.sign(signing_input.encode('ascii')))}"


def sign_claims(
    signer: KeyPair,
    *,
    origin_url: str,
    target_url: str,
    hash: str,
    subject: str,
    issued_at: int | None = None,
    jti: str | None = None,
) -> str:
    """Invocation claims from precomputed URLs and hash (the client's hot path)."""
    claims = {
        "jti": new_jti() if jti is None else jti,
        "iat": int(time.time()) if issued_at is None else issued_at,
        "iss": signer.public_key,
        "sub": subject,
        "wascap": {"target_url": target_url, "origin_url": origin_url, "hash": hash},
        "wascap_revision": WASCAP_REVISION,
    }
    return encode_jwt(signer, claims)


def sign_invocation_claims(
    signer: KeyPair,
    *,
    origin: WasmCloudEntity,
    target: WasmCloudEntity,
    operation: str,
    msg: bytes,
    invocation_id: str,
    issued_at: int | None = None,
    jti: str | None = None,
) -> str:
    """The JWT a host puts in ``Invocation.encoded_claims``, byte-identical to wascap's."""
    origin_url = origin.url()
    target_url = f"{target.url()}/{operation}"
    return sign_claims(
        signer,
        origin_url=origin_url,
        target_url=target_url,
        hash=invocation_hash(origin_url, target_url, operation, msg),
        subject=invocation_id,
        issued_at=issued_at,
        jti=jti,
    )


def make_signed_invocation(
    signer: KeyPair,
    origin: WasmCloudEntity,
    target: WasmCloudEntity,
    operation: str,
    msg: bytes,
    invocation_id: str | None = None,
    host_id: str | None = None,
) -> Invocation:
    """A complete, validly signed Invocation as the OTP host would send it."""
    inv_id = str(uuid.uuid4()) if invocation_id is None else invocation_id
    token = sign_invocation_claims(
        signer, origin=origin, target=target, operation=operation, msg=msg, invocation_id=inv_id
    )
    return Invocation(
        origin=origin,
        target=target,
        operation=operation,
        msg=msg,
        id=inv_id,
        encoded_claims=token,
        host_id=signer.public_key if host_id is None else host_id,
        content_length=len(msg),
    )


# -------------------------------------------------------------------- validation ----


_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")


def _decode_segment(segment: str, what: str) -> bytes:
    # The regex pins the urlsafe alphabet (no '+', '/', '=' or non-ASCII); binascii then decodes
    # without base64.urlsafe_b64decode's per-call Python overhead (this runs twice per call).
    if len(segment) % 4 == 1 or _B64URL.fullmatch(segment) is None:
        raise ClaimsError(f"Decode error: invalid base64url in JWT {what} segment")
    padded = (segment + "=" * (-len(segment) % 4)).encode("ascii")
    return binascii.a2b_base64(padded.translate(_URLSAFE_TO_STANDARD))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid number {name}")


#: One decoder for every call: ``json.loads`` with keyword arguments builds a new one each time.
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    raw = _decode_segment(segment, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClaimsError(f"UTF8 error: {exc.reason} in JWT {what}") from None
    try:
        obj = _JSON_DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise ClaimsError(f"Serialization error: {exc}") from None
    if type(obj) is not dict:
        raise ClaimsError(f"Serialization error: JWT {what} is not a JSON object")
    return obj


def _check_header(header: dict[str, Any]) -> None:
    try:
        typ = f.as_str(header["typ"], "typ") if "typ" in header else None
        alg = f.as_str(header["alg"], "alg") if "alg" in header else None
    except f.FieldError as exc:
        raise ClaimsError(f"Serialization error: {exc}") from None
    if typ is None or alg is None:
        raise ClaimsError(f"Serialization error: missing field `{'typ' if typ is None else 'alg'}`")
    if alg != "Ed25519":
        raise ClaimsError("Invalid JWT algorithm. WASCAP only supports Ed25519")
    if typ != "jwt":
        raise ClaimsError("JWT error: Invalid header")


def _optional_u64(claims: dict[str, Any], key: str) -> int | None:
    value = claims.get(key)
    return None if value is None else f.as_int(value, key, 0, f.U64_MAX, "u64")


def _check_claims_shape(claims: dict[str, Any]) -> dict[str, str] | None:
    """Type-check the claims the way serde decodes ``Claims<Invocation>``; returns wascap."""
    try:
        _optional_u64(claims, "exp")
        for key in ("jti", "iat", "iss", "sub"):
            if key not in claims:
                raise f.missing(key)
        f.as_str(claims["jti"], "jti")
        f.as_int(claims["iat"], "iat", 0, f.U64_MAX, "u64")
        f.as_str(claims["iss"], "iss")
        f.as_str(claims["sub"], "sub")
        _optional_u64(claims, "nbf")
        wascap = claims.get("wascap")
        if wascap is not None:
            if type(wascap) is not dict:
                raise f.type_error("wascap", wascap, "struct Invocation")
            for key in ("target_url", "origin_url", "hash"):
                if key not in wascap:
                    raise f.missing(f"wascap.{key}")
                f.as_str(wascap[key], f"wascap.{key}")
        revision = claims.get("wascap_revision")
        if revision is not None:
            f.as_int(revision, "wascap_revision", 0, f.U32_MAX, "u32")
    except f.FieldError as exc:
        raise ClaimsError(f"Serialization error: {exc}") from None
    return wascap


@dataclass(slots=True)
class PreparedClaims:
    """A token that passed steps 1-2 and awaits its signature check (step 3).

    Splitting validation here lets the provider run the one expensive step, the Ed25519
    verification, on another core, while the ordered checks and their error texts stay exactly
    those of :func:`validate_invocation`.
    """

    claims: dict[str, Any]
    wascap: dict[str, str] | None
    issuer_key: bytes
    signing_input: bytes
    signature: bytes
    now: float


def prepare_claims(inv: Invocation, *, now: float | None = None) -> PreparedClaims:
    """Steps 1-2 of spec §7.3: token structure, header, claims shape, issuer key, expiry."""
    token = inv.encoded_claims
    if type(token) is not str:
        raise ClaimsError("JWT error: invalid token format")
    if len(token) > MAX_TOKEN_BYTES:
        raise ClaimsError(f"JWT error: token too large ({len(token)} bytes > {MAX_TOKEN_BYTES})")
    parts = token.split(".")
    if len(parts) != 3:
        raise ClaimsError("JWT error: invalid token format")
    head_seg, claims_seg, sig_seg = parts
    signature = _decode_segment(sig_seg, "signature")
    if head_seg != _HEADER_SEGMENT:  # fast path: every real signer emits the same header
        _check_header(_json_object(head_seg, "header"))
    claims = _json_object(claims_seg, "claims")
    wascap = _check_claims_shape(claims)
    issuer = claims["iss"]
    if not issuer:
        raise ClaimsError("Invalid JWT. WASCAP requires an issuer claim to be present")
    if not claims["sub"]:
        raise ClaimsError("Invalid JWT. WASCAP requires a sub claim to be present")
    try:
        issuer_key = verify_key_for(issuer).encode()
    except NKeyError as exc:
        raise ClaimsError(f"Encryption error: {exc}") from None
    if now is None:
        now = time.time()
    exp = claims.get("exp")
    if exp is not None and exp < now:
        raise ClaimsError("Invocation claims token expired")
    # Segments passed the base64url alphabet check, so they are pure ASCII.
    signing_input = f"{head_seg}.{claims_seg}".encode("ascii")
    return PreparedClaims(claims, wascap, issuer_key, signing_input, signature, now)


def signature_valid(issuer_key: bytes, signing_input: bytes, signature: bytes) -> bool:
    """Step 3: the Ed25519 check itself. Pure function of bytes: safe to run in any process."""
    if len(signature) != 64 or len(issuer_key) != 32:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + signing_input, issuer_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def finish_claims(inv: Invocation, prepared: PreparedClaims, signature_ok: bool) -> dict[str, Any]:
    """Steps 3 (its verdict) to 9 of spec §7.3; returns the claims."""
    if not signature_ok:
        raise ClaimsError("Invocation claims signature invalid")
    claims, wascap = prepared.claims, prepared.wascap
    nbf = claims.get("nbf")
    if nbf is not None and prepared.now < nbf:
        raise ClaimsError("Attempt to use invocation before claims token allows")

    # ---- steps 5-9: bind the claims to this invocation
    if wascap is None:
        raise ClaimsError("No wascap metadata found on claims")
    try:
        origin_url = inv.origin.url()
        target_url = f"{inv.target.url()}/{inv.operation}"
        computed = invocation_hash(origin_url, target_url, inv.operation, inv.msg)
    except Exception as exc:  # only reachable with a hand-built Invocation of wrong types
        raise ClaimsError(f"Invalid invocation: {exc}") from None
    if wascap["hash"] != computed:
        raise ClaimsError(
            f"Invocation hash does not match signed claims hash ({wascap['hash']} / {computed})"
        )
    host_id = inv.host_id
    if type(host_id) is not str:
        raise ClaimsError(f"Invalid host ID on invocation: '{host_id}'")
    # Reproduced bug-for-bug from wasmbus-rpc (`&&` where `||` was meant); Rust's len() counts
    # UTF-8 bytes.
    if not host_id.startswith("N") and len(host_id.encode("utf-8", "surrogatepass")) != 56:
        raise ClaimsError(f"Invalid host ID on invocation: '{host_id}'")
    if wascap["target_url"] != target_url:
        raise ClaimsError(
            "Invocation claims and invocation target URL do not match: "
            f"{wascap['target_url']} != {target_url}"
        )
    if wascap["origin_url"] != origin_url:
        raise ClaimsError("Invocation claims and invocation origin URL do not match")
    return claims


def validate_invocation(inv: Invocation, *, now: float | None = None) -> dict[str, Any]:
    """Check ``inv.encoded_claims`` against the invocation (spec §7.3 steps 1-9).

    Returns the decoded claims on success. Raises ``ClaimsError`` — and nothing else, whatever
    the input — on the first failed check. ``now`` (unix seconds) exists for tests and replays.
    """
    prepared = prepare_claims(inv, now=now)
    ok = signature_valid(prepared.issuer_key, prepared.signing_input, prepared.signature)
    return finish_claims(inv, prepared, ok)


# ------------------------------------------------------- provider-side check texts ----


def issuer_not_trusted_error() -> str:
    """Text when the claims' ``iss`` is not in ``HostData.cluster_issuers`` (spec §6 4.1)."""
    return "Issuer of this invocation is not in list of cluster issuers"


def target_mismatch_error(target_key: str, host_id: str) -> str:
    """Text when the target is not this provider; the SDK prints the *host id* on the right."""
    return f"target key mismatch: {target_key} != {host_id}"


def unlinked_actor_error(actor_key: str) -> str:
    """Text when the calling actor has no link to this provider (spec §6 4.3)."""
    return f"unlinked actor: '{actor_key}'"
