# The wasmcloud:keyvalue provider as a container image. A wasmCloud host launches providers as
# child processes and writes the HostData line to their stdin, so run it with stdin attached
# (`docker run -i ...`) and pipe that line in. Without a host, use the entrypoint
# `provider-from-env`, which builds that line from environment variables (docker-compose.yml).
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 provider \
    && useradd --system --uid 10001 --gid provider --create-home \
       --home-dir /home/provider --shell /usr/sbin/nologin provider

WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY provider/ provider/
# Dependency versions are bounded in pyproject.toml; "." is the project itself, a local path.
RUN pip install --no-cache-dir . \
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
