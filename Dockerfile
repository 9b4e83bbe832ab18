# The wasmcloud:keyvalue provider as a container image. A wasmCloud host launches providers as
# child processes and writes the HostData line to their stdin, so run it with stdin attached
# (`docker run -i ...`) and pipe that line in.
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

WORKDIR /home/provider
# Numeric ids: resolvable without /etc/passwd, and runtimes can verify "not root" from them.
USER 10001:10001

# No Docker health check on purpose: the wasmCloud host checks provider health over NATS
# (the `.health` RPC subject), and a second, container-level probe would only disagree with it.
HEALTHCHECK NONE

ENTRYPOINT ["nats-kvcache-provider"]
