"""contract.nkeys: reproduces the fixed test keys and rejects malformed keys."""

import base64
import json
from pathlib import Path

import pytest

from contract.nkeys import (
    KeyKind,
    KeyPair,
    NKeyError,
    crc16_xmodem,
    decode_public_key,
    verify_key_for,
    verify_signature,
)

DATA = json.loads((Path(__file__).resolve().parent.parent / "data" / "vectors.json").read_text())
KEYS = {name: k for name, k in DATA["keys"].items() if "public_key" in k}
EXPECTED_KIND = {
    "cluster": "cluster",
    "host": "server",
    "provider": "service",
    "actor": "module",
    "test_harness_host": "server",
}


def test_vector_file_has_five_keys() -> None:
    assert set(KEYS) == set(EXPECTED_KIND)


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_seed_round_trips_to_public_key(name: str) -> None:
    key = KEYS[name]
    kp = KeyPair.from_seed(key["seed"])
    assert kp.public_key == key["public_key"]
    assert kp.seed == key["seed"]
    assert kp.kind == EXPECTED_KIND[name] == key["kind"]
    kind, raw = decode_public_key(key["public_key"])
    assert kind == key["kind"]
    assert raw.hex() == key["raw_public_hex"]
    assert KeyPair(kind, bytes.fromhex(key["raw_seed_hex"])).public_key == key["public_key"]


def test_prefix_letters() -> None:
    letters = {"cluster": "C", "host": "N", "provider": "V", "actor": "M"}
    for name, letter in letters.items():
        assert KEYS[name]["public_key"][0] == letter
        assert KEYS[name]["seed"][:2] == "S" + letter


def test_crc16_xmodem_check_value() -> None:
    assert crc16_xmodem(b"123456789") == 0x31C3


@pytest.mark.parametrize("kind", [k.value for k in KeyKind])
def test_generate_every_kind(kind: str) -> None:
    kp = KeyPair.generate(kind)
    assert kp.kind == kind
    assert len(kp.public_key) == 56
    assert len(kp.seed) == 58
    assert KeyPair.from_seed(kp.seed) == kp
    assert decode_public_key(kp.public_key)[0] == kind


def test_sign_and_verify() -> None:
    kp = KeyPair.from_seed(KEYS["cluster"]["seed"])
    sig = kp.sign(b"payload")
    assert len(sig) == 64
    assert verify_signature(kp.public_key, b"payload", sig)
    assert not verify_signature(kp.public_key, b"payload!", sig)
    assert not verify_signature(kp.public_key, b"payload", sig[:-1])
    assert not verify_signature(KEYS["host"]["public_key"], b"payload", sig)


def test_verify_key_cache_is_bounded_and_reused() -> None:
    key = KEYS["provider"]["public_key"]
    assert verify_key_for(key) is verify_key_for(key)
    assert verify_key_for.cache_info().maxsize is not None


def test_repr_never_contains_the_seed() -> None:
    kp = KeyPair.from_seed(KEYS["actor"]["seed"])
    for text in (repr(kp), str(kp), f"{kp}"):
        assert KEYS["actor"]["seed"] not in text
        assert KEYS["actor"]["public_key"] in text


def _flip_last_char(s: str) -> str:
    return s[:-1] + ("A" if s[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "length 0"),
        (KEYS["actor"]["public_key"][:-1], "length 55"),
        (KEYS["actor"]["public_key"].lower(), "not base32"),
        (KEYS["actor"]["public_key"][:-1] + "1", "not base32"),
        (_flip_last_char(KEYS["actor"]["public_key"]), "checksum"),
        (KEYS["actor"]["seed"], "length 58"),
    ],
)
def test_decode_public_key_rejects(value: str, fragment: str) -> None:
    with pytest.raises(NKeyError, match=fragment):
        decode_public_key(value)


def test_decode_public_key_rejects_unknown_prefix() -> None:
    raw = bytes([1 << 3]) + bytes(32)  # 'B' is not an nkey type
    raw += crc16_xmodem(raw).to_bytes(2, "little")
    text = base64.b32encode(raw).decode().rstrip("=")
    with pytest.raises(NKeyError, match="unknown prefix"):
        decode_public_key(text)


def test_decode_public_key_rejects_non_string() -> None:
    with pytest.raises(NKeyError):
        decode_public_key(b"N" * 56)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        KEYS["actor"]["public_key"],  # a public key is not a seed
        KEYS["actor"]["seed"][:-1],
        _flip_last_char(KEYS["actor"]["seed"]),
        "X" + KEYS["actor"]["seed"][1:],
    ],
)
def test_from_seed_rejects(value: str) -> None:
    with pytest.raises(NKeyError):
        KeyPair.from_seed(value)


def test_generate_rejects_unknown_kind() -> None:
    with pytest.raises(NKeyError, match="unknown key kind"):
        KeyPair.generate("seed")


def test_verify_signature_with_malformed_key_raises() -> None:
    with pytest.raises(NKeyError):
        verify_signature("NOTAKEY", b"data", bytes(64))
