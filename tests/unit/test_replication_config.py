"""provider.replication.config: link values become a ReplicationConfig, totally and safely.

Parsing never raises: a bad value is reported in ``problems`` (naming the key) and the default
is kept, so a typo in a link definition never takes a cache down.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.natsconn import connect_options
from provider.replication.config import (
    DEFAULT_HEARTBEAT_SECS,
    DEFAULT_TOMBSTONE_HORIZON_SECS,
    ReplicationConfig,
    normalize,
    parse_config_json,
    subject_token,
    unusable_name,
)

LATTICE = "default"
LINK = "default"


def make(values: dict[str, str] | None = None, **kw: str) -> ReplicationConfig:
    kw.setdefault("lattice_prefix", LATTICE)
    kw.setdefault("link_name", LINK)
    return ReplicationConfig.from_values(values or {}, **kw)


def is_single_token(text: str) -> bool:
    return bool(text) and not any(c in text for c in ".*>") and not any(c.isspace() for c in text)


# ---------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    config = make()
    assert config.nats_url is None
    assert not config.enabled
    assert config.events_subject == "kvcache.default.default.events"
    assert config.replay_subject == "kvcache.default.default.replay"
    assert config.heartbeat_secs == DEFAULT_HEARTBEAT_SECS == 5.0
    assert config.tombstone_horizon_secs == DEFAULT_TOMBSTONE_HORIZON_SECS
    assert config.mode == "nats"
    assert config.client_jwt is None and config.client_seed is None
    assert config.creds_file is None
    assert config.tls_ca_file is None
    assert config.tls_cert_file is None and config.tls_key_file is None
    assert config.cache_prefix == "default__default"
    assert config.js_storage == "memory"
    assert config.js_replicas == 1
    assert config.js_max_bytes == -1
    assert config.js_domain is None
    assert config.problems == []


def test_subjects_include_lattice_and_link() -> None:
    config = make(lattice_prefix="prod", link_name="cache1")
    assert config.events_subject == "kvcache.prod.cache1.events"
    assert config.replay_subject == "kvcache.prod.cache1.replay"
    assert config.cache_prefix == "prod__cache1"


def test_different_lattices_and_links_get_different_subjects() -> None:
    configs = [
        make(lattice_prefix="a", link_name="x"),
        make(lattice_prefix="b", link_name="x"),
        make(lattice_prefix="a", link_name="y"),
    ]
    for attribute in ("events_subject", "replay_subject", "cache_prefix"):
        values = [getattr(config, attribute) for config in configs]
        assert len(set(values)) == len(values), attribute


@pytest.mark.parametrize(
    "text", ["a.b", "with space", ">", "*", "a.>", "tab\there", "", "ünïcode", "x\ny", "a/b:c"]
)
def test_hostile_lattice_and_link_become_single_safe_tokens(text: str) -> None:
    token = subject_token(text)
    assert is_single_token(token)
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in token)
    config = make(lattice_prefix=text, link_name=text)
    for subject in (config.events_subject, config.replay_subject):
        parts = subject.split(".")
        assert len(parts) == 4
        assert parts[0] == "kvcache"
        assert parts[1] == parts[2] == token
        assert parts[3] in ("events", "replay")
        assert all(is_single_token(part) for part in parts)
    assert is_single_token(config.cache_prefix)


def test_subject_token_keeps_safe_text() -> None:
    assert subject_token("Lattice-1a") == "Lattice-1a"
    assert subject_token("a.b") == "a_2Eb"
    assert subject_token("a_b") == "a_5Fb"


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("cache.v1", "default"), ("cache_v1", "default")),
        (("team.a", "default"), ("team_a", "default")),
        (("default", "backup_cache"), ("default_backup", "cache")),
        (("a", "_"), ("a_", "")),
        (("\ud800", "default"), ("?", "default")),  # a lone surrogate (valid in JSON)
    ],
)
def test_names_never_mix(one: tuple[str, str], other: tuple[str, str]) -> None:
    first = make(lattice_prefix=one[0], link_name=one[1])
    second = make(lattice_prefix=other[0], link_name=other[1])
    for attribute in ("events_subject", "replay_subject", "cache_prefix"):
        assert getattr(first, attribute) != getattr(second, attribute), attribute


@given(
    st.tuples(st.text(max_size=8), st.text(max_size=8)),
    st.tuples(st.text(max_size=8), st.text(max_size=8)),
)
def test_subjects_and_stream_names_are_injective(a: tuple[str, str], b: tuple[str, str]) -> None:
    if a == b:
        return
    first = make(lattice_prefix=a[0], link_name=a[1])
    second = make(lattice_prefix=b[0], link_name=b[1])
    assert first.events_subject != second.events_subject
    assert first.cache_prefix != second.cache_prefix


def test_explicit_cache_prefix_is_used_exactly() -> None:
    config = make({"CACHE_PREFIX": "default"})
    assert config.cache_prefix == "default"
    assert config.problems == []


def test_unusable_cache_prefix_is_reported_and_escaped() -> None:
    config = make({"CACHE_PREFIX": "a.b"})
    assert config.cache_prefix == "a_2Eb"
    assert "CACHE_PREFIX='a.b'" in config.problems[0]


@pytest.mark.parametrize("name", ["", "*", ">", "a.*", "a.>", "a..b", ".a"])
def test_wildcard_and_empty_names_are_unusable(name: str) -> None:
    assert unusable_name(name)


@pytest.mark.parametrize("name", ["default", "cache.v1", "team_a", "ünï"])
def test_ordinary_names_are_usable(name: str) -> None:
    assert not unusable_name(name)


def test_explicit_subjects_override_defaults() -> None:
    config = make({"STATE_REPL_SUBJECT": "my.events", "REPLAY_REQ_SUBJECT": "my.replay"})
    assert config.events_subject == "my.events"
    assert config.replay_subject == "my.replay"


# ---------------------------------------------------------------------------- keys and URLs


def test_keys_are_case_insensitive() -> None:
    config = make(
        {
            "nats_url": "nats://h:4222",
            "Replay_Heartbeat_Secs": "2",
            "replication": "jetstream",
            "cache_prefix": "cp",
            "js_domain": "hub",
        }
    )
    assert config.nats_url == "nats://h:4222"
    assert config.enabled
    assert config.heartbeat_secs == 2.0
    assert config.mode == "jetstream"
    assert config.cache_prefix == "cp"
    assert config.js_domain == "hub"
    assert config.problems == []


def test_normalize_uppercases_and_keeps_strings_only() -> None:
    assert normalize(None) == {}
    assert normalize({}) == {}
    assert normalize({"a": "1", "B": "2", "c": 3, 4: "x"}) == {"A": "1", "B": "2"}  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("localhost", "nats://localhost"),
        ("  host:4222  ", "nats://host:4222"),
        ("nats://h:4222", "nats://h:4222"),
        ("tls://h:4443", "tls://h:4443"),
    ],
)
def test_nats_url_gets_a_scheme(raw: str, expected: str) -> None:
    assert make({"NATS_URL": raw}).nats_url == expected


@pytest.mark.parametrize("raw", ["", "   "])
def test_blank_nats_url_disables(raw: str) -> None:
    config = make({"NATS_URL": raw})
    assert config.nats_url is None
    assert not config.enabled


def test_comma_separated_nats_url_is_normalised_and_split() -> None:
    raw = "nats://a:4222, nats://b:4222,nats://c:4222"
    config = make({"NATS_URL": raw})
    assert config.nats_url == "nats://a:4222,nats://b:4222,nats://c:4222"
    expected = ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert connect_options(config.nats_url, "test")["servers"] == expected
    assert config.connect_options("test")["servers"] == expected


def test_connect_options_split_ignores_empty_parts() -> None:
    assert connect_options("nats://a:1,,nats://b:2,", "n")["servers"] == [
        "nats://a:1",
        "nats://b:2",
    ]


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("raw", ["abc", "-1", "0", "nan", "NaN", "1e9", "inf", "0.05", "3601"])
def test_invalid_heartbeat_keeps_default_and_reports(raw: str) -> None:
    config = make({"REPLAY_HEARTBEAT_SECS": raw})
    assert config.heartbeat_secs == DEFAULT_HEARTBEAT_SECS == 5.0
    assert len(config.problems) == 1
    assert "REPLAY_HEARTBEAT_SECS" in config.problems[0]
    assert repr(raw) in config.problems[0]


@pytest.mark.parametrize(("raw", "expected"), [("0.5", 0.5), ("10", 10.0), ("0.1", 0.1)])
def test_valid_heartbeat_is_accepted(raw: str, expected: float) -> None:
    config = make({"REPLAY_HEARTBEAT_SECS": raw})
    assert config.heartbeat_secs == expected
    assert config.problems == []


def test_empty_number_means_default_without_a_problem() -> None:
    config = make({"REPLAY_HEARTBEAT_SECS": "", "JS_REPLICAS": ""})
    assert config.heartbeat_secs == DEFAULT_HEARTBEAT_SECS
    assert config.js_replicas == 1
    assert config.problems == []


def test_tombstone_horizon() -> None:
    assert make({"TOMBSTONE_HORIZON_SECS": "60"}).tombstone_horizon_secs == 60.0
    for raw in ("0", "0.5", "-5", "x", "nan", str(31 * 86400)):
        config = make({"TOMBSTONE_HORIZON_SECS": raw})
        assert config.tombstone_horizon_secs == DEFAULT_TOMBSTONE_HORIZON_SECS
        assert len(config.problems) == 1
        assert "TOMBSTONE_HORIZON_SECS" in config.problems[0]


def test_several_problems_are_all_reported() -> None:
    config = make({"REPLAY_HEARTBEAT_SECS": "x", "TOMBSTONE_HORIZON_SECS": "y", "JS_REPLICAS": "9"})
    assert len(config.problems) == 3
    text = " ".join(config.problems)
    for key in ("REPLAY_HEARTBEAT_SECS", "TOMBSTONE_HORIZON_SECS", "JS_REPLICAS"):
        assert key in text


# ---------------------------------------------------------------------------- mode and JetStream


@pytest.mark.parametrize("raw", ["JetStream", "JETSTREAM", "jetstream", " jetstream "])
def test_replication_jetstream_any_case(raw: str) -> None:
    config = make({"REPLICATION": raw})
    assert config.mode == "jetstream"
    assert config.problems == []


@pytest.mark.parametrize("raw", ["NATS", "nats", "", "Nats"])
def test_replication_nats(raw: str) -> None:
    config = make({"REPLICATION": raw})
    assert config.mode == "nats"
    assert config.problems == []


def test_bogus_replication_falls_back_to_nats() -> None:
    config = make({"REPLICATION": "raft"})
    assert config.mode == "nats"
    assert len(config.problems) == 1
    assert "REPLICATION" in config.problems[0]
    assert "raft" in config.problems[0]


def test_js_storage() -> None:
    assert make({"JS_STORAGE": "File"}).js_storage == "file"
    assert make({"JS_STORAGE": "memory"}).js_storage == "memory"
    config = make({"JS_STORAGE": "disk"})
    assert config.js_storage == "memory"
    assert len(config.problems) == 1
    assert "JS_STORAGE" in config.problems[0]


@pytest.mark.parametrize("raw", ["1", "3", "5"])
def test_js_replicas_valid(raw: str) -> None:
    config = make({"JS_REPLICAS": raw})
    assert config.js_replicas == int(raw)
    assert isinstance(config.js_replicas, int)
    assert config.problems == []


@pytest.mark.parametrize("raw", ["0", "6", "-1", "three", "nan"])
def test_js_replicas_invalid(raw: str) -> None:
    config = make({"JS_REPLICAS": raw})
    assert config.js_replicas == 1
    assert len(config.problems) == 1
    assert "JS_REPLICAS" in config.problems[0]


def test_js_max_bytes() -> None:
    config = make({"JS_MAX_BYTES": "1048576"})
    assert config.js_max_bytes == 1048576
    assert isinstance(config.js_max_bytes, int)
    assert make({"JS_MAX_BYTES": "-1"}).js_max_bytes == -1
    for raw in ("-2", "lots", str(2**63)):
        config = make({"JS_MAX_BYTES": raw})
        assert config.js_max_bytes == -1
        assert len(config.problems) == 1
        assert "JS_MAX_BYTES" in config.problems[0]


# ---------------------------------------------------------------------------- credentials and TLS


@pytest.mark.parametrize("values", [{"CLIENT_JWT": "eyJ.jwt"}, {"CLIENT_SEED": "SUAFAKESEED"}])
def test_jwt_and_seed_must_come_together(values: dict[str, str]) -> None:
    config = make({"NATS_URL": "h", **values})
    assert config.client_jwt is None
    assert config.client_seed is None
    assert len(config.problems) == 1
    assert "CLIENT_JWT" in config.problems[0] and "CLIENT_SEED" in config.problems[0]
    assert "eyJ.jwt" not in config.problems[0] and "SUAFAKESEED" not in config.problems[0]


def test_jwt_and_seed_together_are_kept() -> None:
    config = make({"client_jwt": "eyJ.jwt", "client_seed": "SUAFAKESEED"})
    assert config.client_jwt == "eyJ.jwt"
    assert config.client_seed == "SUAFAKESEED"
    assert config.problems == []


@pytest.mark.parametrize("values", [{"TLS_CERT_FILE": "/c.pem"}, {"TLS_KEY_FILE": "/k.pem"}])
def test_tls_cert_and_key_must_come_together(values: dict[str, str]) -> None:
    config = make({"TLS_CA_FILE": "/ca.pem", **values})
    assert config.tls_cert_file is None
    assert config.tls_key_file is None
    assert config.tls_ca_file == "/ca.pem"
    assert len(config.problems) == 1
    assert "TLS_CERT_FILE" in config.problems[0] and "TLS_KEY_FILE" in config.problems[0]


def test_tls_cert_and_key_together_are_kept() -> None:
    config = make({"TLS_CERT_FILE": "/c.pem", "TLS_KEY_FILE": "/k.pem", "CREDS_FILE": "/u.creds"})
    assert (config.tls_cert_file, config.tls_key_file) == ("/c.pem", "/k.pem")
    assert config.creds_file == "/u.creds"
    assert config.problems == []


def test_repr_never_shows_secrets() -> None:
    jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.SECRETJWTBODY"
    seed = "SUACSSL3UAHUDXKFSNVUZRF5UHPMWZ6BFDTJ7M6USDXIEDNPPQYYYCU3VY"
    config = make({"NATS_URL": "h", "CLIENT_JWT": jwt, "CLIENT_SEED": seed})
    assert config.client_jwt == jwt and config.client_seed == seed
    for text in (repr(config), str(config)):
        assert seed not in text
        assert jwt not in text
        assert "SECRETJWTBODY" not in text
    # also when the pair is incomplete and reported as a problem
    lonely = make({"CLIENT_SEED": seed})
    assert seed not in repr(lonely)


# ---------------------------------------------------------------------------- config_json


@pytest.mark.parametrize("text", [None, "", "null", "[]", "[1, 2]", "3", '"s"', "{not json", "{"])
def test_parse_config_json_non_maps_give_empty(text: str | None) -> None:
    assert parse_config_json(text) == {}


def test_parse_config_json_map() -> None:
    document = {"nats_url": "h:4222", "REPLICATION": "jetstream", "JS_REPLICAS": 3}
    assert parse_config_json(json.dumps(document)) == {
        "NATS_URL": "h:4222",
        "REPLICATION": "jetstream",
        "JS_REPLICAS": "3",
    }


def test_parse_config_json_encodes_non_strings_as_json() -> None:
    document = {"a": 1.5, "b": True, "c": None, "d": [1, "x"], "e": {"k": "v"}, "f": "plain"}
    parsed = parse_config_json(json.dumps(document))
    assert parsed == {
        "A": "1.5",
        "B": "true",
        "C": "null",
        "D": '[1, "x"]',
        "E": '{"k": "v"}',
        "F": "plain",
    }
    assert all(isinstance(value, str) for value in parsed.values())


def test_parse_config_json_feeds_from_values() -> None:
    values = parse_config_json(json.dumps({"nats_url": "h", "js_replicas": 3}))
    config = make(values)
    assert config.nats_url == "nats://h"
    assert config.js_replicas == 3
    assert config.problems == []


# ---------------------------------------------------------------------------- fingerprint


def test_fingerprint_equal_for_equal_setups() -> None:
    values = {"NATS_URL": "h:4222", "REPLICATION": "jetstream"}
    assert make(values).fingerprint() == make(dict(values)).fingerprint()
    # key case and the scheme default do not change the set-up
    assert make({"nats_url": "nats://h:4222", "replication": "JetStream"}).fingerprint() == (
        make(values).fingerprint()
    )


@pytest.mark.parametrize(
    ("changed", "kw"),
    [
        ({"NATS_URL": "other:4222"}, {}),
        ({"REPLICATION": "nats"}, {}),
        ({"CACHE_PREFIX": "cp"}, {}),
        ({"CREDS_FILE": "/u.creds"}, {}),
        ({"CLIENT_JWT": "jwt", "CLIENT_SEED": "seed"}, {}),
        ({"STATE_REPL_SUBJECT": "x.events"}, {}),
        ({"REPLAY_REQ_SUBJECT": "x.replay"}, {}),
        ({}, {"link_name": "other"}),
        ({}, {"lattice_prefix": "other"}),
    ],
)
def test_fingerprint_differs_when_setup_differs(changed: dict[str, str], kw: dict) -> None:
    base = {"NATS_URL": "h:4222", "REPLICATION": "jetstream"}
    assert make(base).fingerprint() != make({**base, **changed}, **kw).fingerprint()


def test_fingerprint_is_hashable() -> None:
    assert hash(make({"NATS_URL": "h"}).fingerprint()) == hash(
        make({"NATS_URL": "h"}).fingerprint()
    )


def test_every_server_of_a_list_gets_a_scheme() -> None:
    config = ReplicationConfig.from_values(
        {"NATS_URL": "a:4222, nats://b:4222 ,tls://c:4222"}, lattice_prefix="l", link_name="k"
    )
    assert config.nats_url == "nats://a:4222,nats://b:4222,tls://c:4222"
