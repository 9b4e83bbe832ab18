#!/bin/sh
# Start nats-kvcache-provider from environment variables instead of a wasmCloud host.
#
# A host launches a provider with one base64 HostData line on stdin (wasmbus protocol §1-§3).
# Outside a host (docker compose, a plain container) this script builds that line from the
# environment and hands it to the provider, which then replaces this shell (exec), so the
# provider gets the container's signals itself. It handles SIGTERM (`docker stop`) and SIGINT
# with a clean shutdown, exit 0. Still run the container with an init (`init: true`, tini):
# as PID 1 the provider gets no default signal actions, so a SIGTERM that arrives before its
# handler is installed (while it is still connecting) would be ignored; tini also reaps any
# child processes.
#
# Required:
#   PROVIDER_KEY           provider public key V... (all replicas of one provider share it)
#   CLUSTER_SEED           cluster seed SC...: HostData.invocation_seed; its public key is the
#                          trusted invocation issuer (clients sign calls with this seed);
#                          or CLUSTER_SEED_FILE (below)
# Optional:
#   LATTICE_RPC_URL        lattice NATS, host:port or nats://... (default 127.0.0.1:4222)
#   LATTICE_RPC_PREFIX     lattice prefix (default "default")
#   LINK_NAME              link name (default "default")
#   LATTICE_RPC_USER_JWT   NATS user JWT  } for an authenticated lattice connection;
#   LATTICE_RPC_USER_SEED  NATS user seed } both or neither
#   CLUSTER_ISSUERS        extra trusted issuers, comma-separated public keys
#   HOST_ID                host public key N... (default: a fresh one per start)
#   LINK_ACTORS            actor public keys M..., comma-separated, linked at start
#   NATS_URL               link value: the NATS server replicas replicate through
#   LINK_VALUE_<KEY>       any other link value, e.g. LINK_VALUE_REPLAY_HEARTBEAT_SECS=2
#   CONFIG_JSON            HostData.config_json (JSON object; its NATS_URL wins over links)
#   STRUCTURED_LOGGING     true/false (default false): JSON log lines
#   LOG_LEVEL              e.g. info, debug
#   PYTHON                 interpreter used to build the line (default python3)
#   PROVIDER_CMD           provider command (default nats-kvcache-provider)
#
# Secrets from files: CLUSTER_SEED, LATTICE_RPC_USER_JWT, LATTICE_RPC_USER_SEED, NATS_URL
# (which may carry a password) and CONFIG_JSON can each be given as <NAME>_FILE instead, the
# path of a file holding the value (surrounding whitespace and the final newline are dropped),
# e.g. CLUSTER_SEED_FILE=/run/secrets/cluster_seed for a compose or swarm secret. Set one of
# <NAME> and <NAME>_FILE, not both. The image's HEALTHCHECK (`nats-kvcache health`) reads
# LATTICE_RPC_USER_JWT/LATTICE_RPC_USER_SEED from the environment only.
#
# Keys: PROVIDER_KEY is a 'service' public key (V...), LINK_ACTORS 'module' public keys (M...),
# CLUSTER_SEED a 'cluster' seed (SC...), HOST_ID a 'server' public key (N...); the project's
# nkeys module makes them, e.g. in the image:
#   python -c 'from contract.nkeys import KeyPair as K; print(K.generate("cluster").seed)'
# (docker-compose.yml shows all three). NATS user JWTs and seeds come from the NATS operator
# (nsc), not from here.
#
# Seeds stay in the environment (or their files) and on the provider's stdin: nothing here
# prints them or puts them on a command line, and the secret variables are unset before the
# provider starts.
set -eu

: "${PROVIDER_KEY:?PROVIDER_KEY (provider public key V...) is required}"
PYTHON=${PYTHON:-python3}
PROVIDER_CMD=${PROVIDER_CMD:-nats-kvcache-provider}

host_data_line=$(
    "$PYTHON" - <<'EOF'
import base64, json, os, sys, uuid

from contract.nkeys import KeyPair, NKeyError

env = os.environ


def fail(message):
    print(f"provider-from-env: {message}", file=sys.stderr)
    sys.exit(2)


def keys(name):
    return [part.strip() for part in env.get(name, "").split(",") if part.strip()]


def secret(name):
    """The value of NAME, or the contents of the file NAME_FILE names (never both)."""
    value, path = env.get(name, ""), env.get(f"{name}_FILE", "")
    if not path:
        return value
    if value:
        fail(f"set {name} or {name}_FILE, not both")
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except OSError as error:  # the message names the file, never its contents
        fail(f"{name}_FILE: cannot read {path}: {error.strerror or type(error).__name__}")
    except UnicodeError:
        fail(f"{name}_FILE: {path} is not UTF-8 text")


cluster_seed = secret("CLUSTER_SEED").strip()
if not cluster_seed:
    fail("CLUSTER_SEED (cluster seed SC...) or CLUSTER_SEED_FILE is required")
try:
    cluster = KeyPair.from_seed(cluster_seed)
except NKeyError as error:  # the text never contains the seed
    fail(f"CLUSTER_SEED: {error}")
nats_url = secret("NATS_URL").strip()
host_id = env.get("HOST_ID", "").strip() or KeyPair.generate("server").public_key
provider_key = env["PROVIDER_KEY"].strip()
link_name = env.get("LINK_NAME", "").strip() or "default"
values = {
    key.removeprefix("LINK_VALUE_"): value
    for key, value in env.items()
    if key.startswith("LINK_VALUE_") and len(key) > len("LINK_VALUE_")
}
if nats_url:
    values["NATS_URL"] = nats_url
links = [
    {
        "actor_id": actor,
        "provider_id": provider_key,
        "link_name": link_name,
        "contract_id": "wasmcloud:keyvalue",
        "values": values,
    }
    for actor in keys("LINK_ACTORS")
]
structured = env.get("STRUCTURED_LOGGING", "").strip().lower()
if structured not in ("", "0", "1", "false", "true", "no", "yes"):
    fail(f"STRUCTURED_LOGGING must be true or false, not {structured!r}")
host_data = {
    "host_id": host_id,
    "lattice_rpc_prefix": env.get("LATTICE_RPC_PREFIX", "").strip() or "default",
    "link_name": link_name,
    "lattice_rpc_user_jwt": secret("LATTICE_RPC_USER_JWT"),
    "lattice_rpc_user_seed": secret("LATTICE_RPC_USER_SEED"),
    "lattice_rpc_url": env.get("LATTICE_RPC_URL", "").strip() or "127.0.0.1:4222",
    "provider_key": provider_key,
    "invocation_seed": cluster.seed,
    "env_values": {},
    "instance_id": str(uuid.uuid4()),
    "link_definitions": links,
    "cluster_issuers": [cluster.public_key, *keys("CLUSTER_ISSUERS")],
    "config_json": secret("CONFIG_JSON") or None,
    "structured_logging": structured in ("1", "true", "yes"),
    "log_level": env.get("LOG_LEVEL") or None,
}
line = base64.b64encode(json.dumps(host_data, separators=(",", ":")).encode())
print(line.decode("ascii"))
print(
    f"provider-from-env: provider {provider_key} link {link_name!r} host {host_id}, "
    f"{len(links)} linked actor(s), issuer {cluster.public_key}",
    file=sys.stderr,
)
EOF
)

# The provider gets the secrets on stdin only, not in its environment as well.
unset CLUSTER_SEED CLUSTER_SEED_FILE LATTICE_RPC_USER_JWT LATTICE_RPC_USER_JWT_FILE \
    LATTICE_RPC_USER_SEED LATTICE_RPC_USER_SEED_FILE

# One line on stdin, as a host writes it. The provider reads exactly one line and never waits
# for more, so the here-document's end (EOF) is harmless.
exec $PROVIDER_CMD <<EOF
$host_data_line
EOF
