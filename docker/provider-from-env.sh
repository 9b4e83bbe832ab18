#!/bin/sh
# Start nats-kvcache-provider from environment variables instead of a wasmCloud host.
#
# A host launches a provider with one base64 HostData line on stdin (wasmbus protocol §1-§3).
# Outside a host (docker compose, a plain container) this script builds that line from the
# environment and hands it to the provider, which then replaces this shell (exec), so the
# provider gets the container's signals. Run the container with `init: true` (tini): the
# provider installs no SIGTERM handler and, as PID 1, would otherwise ignore `docker stop`.
#
# Required:
#   PROVIDER_KEY           provider public key V... (all replicas of one provider share it)
#   CLUSTER_SEED           cluster seed SC...: HostData.invocation_seed; its public key is the
#                          trusted invocation issuer (clients sign calls with this seed)
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
# Seeds stay in the environment and on the provider's stdin: nothing here prints them or puts
# them on a command line.
set -eu

: "${PROVIDER_KEY:?PROVIDER_KEY (provider public key V...) is required}"
: "${CLUSTER_SEED:?CLUSTER_SEED (cluster seed SC...) is required}"
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


try:
    cluster = KeyPair.from_seed(env["CLUSTER_SEED"].strip())
except NKeyError as error:  # the text never contains the seed
    fail(f"CLUSTER_SEED: {error}")
host_id = env.get("HOST_ID", "").strip() or KeyPair.generate("server").public_key
provider_key = env["PROVIDER_KEY"].strip()
link_name = env.get("LINK_NAME", "").strip() or "default"
values = {
    key.removeprefix("LINK_VALUE_"): value
    for key, value in env.items()
    if key.startswith("LINK_VALUE_") and len(key) > len("LINK_VALUE_")
}
if env.get("NATS_URL", "").strip():
    values["NATS_URL"] = env["NATS_URL"].strip()
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
    "lattice_rpc_user_jwt": env.get("LATTICE_RPC_USER_JWT", ""),
    "lattice_rpc_user_seed": env.get("LATTICE_RPC_USER_SEED", ""),
    "lattice_rpc_url": env.get("LATTICE_RPC_URL", "").strip() or "127.0.0.1:4222",
    "provider_key": provider_key,
    "invocation_seed": cluster.seed,
    "env_values": {},
    "instance_id": str(uuid.uuid4()),
    "link_definitions": links,
    "cluster_issuers": [cluster.public_key, *keys("CLUSTER_ISSUERS")],
    "config_json": env.get("CONFIG_JSON") or None,
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

# One line on stdin, as a host writes it. The provider reads exactly one line and never waits
# for more, so the here-document's end (EOF) is harmless.
exec $PROVIDER_CMD <<EOF
$host_data_line
EOF
