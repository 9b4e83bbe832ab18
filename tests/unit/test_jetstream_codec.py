"""provider.replication.jetstream, pure parts: subject tokens, records, stream settings."""

from __future__ import annotations

import base64
import hashlib
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.js import api

from provider.replication.config import ReplicationConfig
from provider.replication.jetstream import (
    FORMAT,
    MAX_TOKEN_CHARS,
    _covers,
    decode_record,
    decode_record_and_writer,
    encode_record,
    key_token,
    stream_settings,
)
from provider.store import Change, KeyValueStore
from provider.store.codec import ChangeDecodeError, encode_change
from provider.store.entry import canonical

HASHED = re.compile(r"h[0-9a-f]{64}")
HOSTILE_KEYS = [
    "",
    "a.b",
    ">",
    "*",
    " ",
    "a b",
    "\t\n",
    "lc.x.>",
    "ünïcödé ☃ 😀",
    "\x00",
    "\ud800",  # a lone surrogate: actors' keys are not always valid UTF-8
    "x" * 700,
    "k" * 1024,
    "é" * 1024,
    "y" * 3 * 1024,
]


def is_single_token(token: str) -> bool:
    return bool(token) and not any(c in ".*>" or c.isspace() for c in token)


def unbase64(token: str) -> str:
    body = token[1:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode("utf-8", "surrogatepass")


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=range(len(HOSTILE_KEYS)))
def test_key_token_is_one_safe_subject_token(key: str) -> None:
    token = key_token(key)
    assert is_single_token(token)
    assert token.isascii()
    assert len(token) <= MAX_TOKEN_CHARS + 1
    assert key_token(key) == token  # deterministic


@pytest.mark.parametrize("key", ["", "a.b", ">", "*", " ", "ünï ☃", "\ud800", "x" * 700])
def test_short_keys_are_reversible(key: str) -> None:
    token = key_token(key)
    assert token.startswith("_")
    assert re.fullmatch(r"_[A-Za-z0-9_-]*", token)
    assert unbase64(token) == key


def test_empty_key() -> None:
    assert key_token("") == "_"


@pytest.mark.parametrize("key", ["k" * 1024, "é" * 1024, "y" * 3 * 1024])
def test_long_keys_are_hashed(key: str) -> None:
    token = key_token(key)
    assert HASHED.fullmatch(token)
    assert token == "h" + hashlib.sha256(key.encode()).hexdigest()


def test_hashing_starts_just_past_the_token_limit() -> None:
    # 768 bytes encode to exactly 1024 base64 characters; one more byte goes over.
    assert key_token("a" * 768) == "_" + base64.urlsafe_b64encode(b"a" * 768).decode()
    assert len(key_token("a" * 768)) == MAX_TOKEN_CHARS + 1
    assert HASHED.fullmatch(key_token("a" * 769))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(max_size=40) | st.text(min_size=760, max_size=800),
        min_size=2,
        max_size=6,
        unique=True,
    )
)
def test_distinct_keys_give_distinct_tokens(keys: list[str]) -> None:
    tokens = [key_token(key) for key in keys]
    assert len(set(tokens)) == len(tokens)
    assert all(is_single_token(token) for token in tokens)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_short_tokens_decode_back(key: str) -> None:
    token = key_token(key)
    if token.startswith("_"):
        assert unbase64(token) == key
    else:
        assert HASHED.fullmatch(token)


# ---------------------------------------------------------------------------- records


def build_changes() -> list[Change]:
    store = KeyValueStore("00000000000000aa", now_ms=lambda: 1_700_000_000_000)
    changes = [
        store.set("plain", "v"),
        store.set("ttl", "v", expires=9),
        store.increment("n", 3)[1],
        store.delete("plain")[1],
        store.list_add("l", "x")[1],
        store.set_add("s", "m")[1],
        store.set("k" * 3000, "long key"),
    ]
    changes += [Change(key, entry.copy()) for key, entry in store.items()]
    return [c for c in changes if c is not None]


@pytest.mark.parametrize("change", build_changes(), ids=lambda c: c.key[:10])
def test_record_round_trip(change: Change) -> None:
    data = encode_record(change)
    assert msgpack.unpackb(data)[0] == FORMAT
    back = decode_record(data)
    assert back.key == change.key
    assert canonical(back.entry) == canonical(change.entry)
    assert encode_record(back) == data


@pytest.mark.parametrize("version", [0, 1, 3, None, "2", [2], 2.5, -1])
def test_other_record_formats_are_rejected(version: object) -> None:
    change = build_changes()[0]
    data = msgpack.packb([version, encode_change(change), ""], use_bin_type=True)
    with pytest.raises(ChangeDecodeError, match="format"):
        decode_record(data)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"garbage",
        msgpack.packb(None),
        msgpack.packb(1),
        msgpack.packb([]),
        msgpack.packb([1]),
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"a": 1}),
        msgpack.packb([1, None]),
        msgpack.packb([2, ["k", 1, "o", 0, 99, 0, None, None], ""]),
        msgpack.packb([2, "not a change", ""]),
        msgpack.packb([2, None]),
        encode_record(Change("k", KeyValueStore("000000000000000a").set("k", "v").entry)) + b"\x00",
        encode_record(Change("k", KeyValueStore("000000000000000a").set("k", "v").entry))[:-1],
    ],
)
def test_garbage_records_are_rejected(data: bytes) -> None:
    with pytest.raises(ChangeDecodeError):
        decode_record(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=100))
def test_random_records_raise_only_change_decode_error(data: bytes) -> None:
    try:
        change = decode_record(data)
    except ChangeDecodeError:
        return
    assert decode_record(encode_record(change)).key == change.key


# ---------------------------------------------------------------------------- stream settings


def config(values: dict[str, str] | None = None) -> ReplicationConfig:
    return ReplicationConfig.from_values(
        {"NATS_URL": "h", "REPLICATION": "jetstream", **(values or {})},
        lattice_prefix="default",
        link_name="cache",
    )


def test_stream_settings_defaults() -> None:
    settings_ = stream_settings(config())
    assert settings_.name == "LATTICECACHE_default__cache"
    assert settings_.subjects == ["lc.default__cache.>"]
    assert settings_.max_msgs_per_subject == 1
    assert settings_.storage == api.StorageType.MEMORY
    assert settings_.num_replicas == 1
    assert settings_.max_bytes == -1
    assert settings_.duplicate_window == 120
    assert settings_.max_consumers == -1
    assert settings_.retention == api.RetentionPolicy.LIMITS


def test_stream_settings_from_config() -> None:
    settings_ = stream_settings(
        config(
            {
                "CACHE_PREFIX": "shop",
                "JS_STORAGE": "file",
                "JS_REPLICAS": "3",
                "JS_MAX_BYTES": "1000000",
            }
        )
    )
    assert settings_.name == "LATTICECACHE_shop"
    assert settings_.subjects == ["lc.shop.>"]
    assert settings_.storage == api.StorageType.FILE
    assert settings_.num_replicas == 3
    assert settings_.max_bytes == 1_000_000


def test_stream_settings_sanitize_the_prefix() -> None:
    settings_ = stream_settings(config({"CACHE_PREFIX": "a.b >*c"}))
    assert settings_.name == "LATTICECACHE_a_2Eb_20_3E_2Ac"
    assert settings_.subjects == ["lc.a_2Eb_20_3E_2Ac.>"]


def test_stream_settings_serialize() -> None:
    body = stream_settings(config()).as_dict()
    assert body["max_msgs_per_subject"] == 1
    assert body["duplicate_window"] == 120 * 10**9  # nanoseconds on the wire


# ---------------------------------------------------------------------------- _covers


@pytest.mark.parametrize(
    "pattern",
    [">", "lc.>", "lc.p.>", "lc.*.>", "*.p.>", "*.*.>", "*.>"],
)
def test_covers_wildcard_patterns(pattern: str) -> None:
    assert _covers(pattern, "lc.p.>")


@pytest.mark.parametrize(
    "pattern",
    [
        "lc.p",  # the stream subject itself only, not the keys below it
        "lc.p.*",  # one token below only (not all of "lc.p.>")
        "lc.p.*.>",  # needs two tokens below
        "lc.p.x.>",
        "lc.q.>",
        "lc.*",
        "lc",
        "other.>",
        "lc.p.x",
        "*",
        "*.*.*",
    ],
)
def test_covers_rejects_narrower_or_other_patterns(pattern: str) -> None:
    assert not _covers(pattern, "lc.p.>")


def test_a_record_names_its_writer_only_in_the_one_node_id_format() -> None:
    change = Change("k", KeyValueStore("000000000000000a").set("k", "v").entry)
    assert decode_record_and_writer(encode_record(change, "00000000000000ab"))[1] == (
        "00000000000000ab"
    )
    for bogus in ("", "n" * 5000, "ghost", 7):
        data = msgpack.packb([2, encode_change(change), bogus], use_bin_type=True)
        assert decode_record_and_writer(data)[1] == ""
