# syntax=docker/dockerfile:1
# The wasmcloud:keyvalue provider as a container image. A wasmCloud host launches providers as
# child processes and writes the HostData line to their stdin, so run it with stdin attached
# (`docker run -i ...`) and pipe that line in. Without a host, use the entrypoint
# `provider-from-env`, which builds that line from environment variables (docker-compose.yml).
#
# The provider handles SIGTERM (`docker stop`) and exits 0 once it has shut down. It may still
# be PID 1 here, so run the container with an init (`docker run --init`, compose `init: true`):
# PID 1 gets no default signal actions, so a SIGTERM that arrives before the provider has
# installed its handler (while it is still connecting) would be ignored, and the init reaps the
# provider's signature-verification worker processes if they outlive it.

# The same minor version as the Python the test suite runs on (CI's python3); the patch is
# pinned for reproducible builds. tests/unit/test_dockerfile.py keeps the two in step.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 provider \
    && useradd --system --uid 10001 --gid provider --create-home \
       --home-dir /home/provider --shell /usr/sbin/nologin provider

WORKDIR /tmp/src
# Dependencies first, in their own layer: it depends only on these two files, so editing the
# source reuses it instead of downloading every dependency again. pyproject.toml names the
# dependencies (lower bounds only, e.g. nats-py>=2.9); constraints.txt pins each of them, their
# own dependencies and the build backend to exact versions, so two builds install the same.
COPY constraints.txt pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(p['build-system']['requires'] + p['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir --requirement requirements.txt --constraint constraints.txt

# The project itself: no dependency resolution (all installed above) and no isolated build
# environment (the pinned build backend is installed above), so nothing is downloaded here.
# `pip check` fails the build if the pins no longer cover what pyproject.toml requires.
# Every package pyproject.toml installs: the CLI's `dev` runs its lattice with the test kit.
COPY README.md ./
COPY contract/ contract/
COPY provider/ provider/
COPY wasmbus_testkit/ wasmbus_testkit/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && pip check \
    && rm -rf /tmp/src
COPY --chmod=0755 docker/provider-from-env.sh /usr/local/bin/provider-from-env

WORKDIR /home/provider
# Numeric ids: resolvable without /etc/passwd, and runtimes can verify "not root" from them.
USER 10001:10001

# The same health request the wasmCloud host sends, on the provider's `.health` subject, using
# the settings provider-from-env reads (LATTICE_RPC_URL, PROVIDER_KEY, ...). Replicas share that
# subject, so this says "the provider answers", not "this container answers". A container fed
# HostData by hand has no such settings: --skip-unconfigured then reports it healthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD ["nats-kvcache", "health", "--quiet", "--skip-unconfigured", "--timeout", "5"]

ENTRYPOINT ["nats-kvcache-provider"]
