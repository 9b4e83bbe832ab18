"""Loopback TCP ports: pick free ones for child servers, and probe whether one is open.

Every server the kit starts listens on 127.0.0.1 on a port chosen here, so tests run in
parallel with each other and with a developer's own nats-server on 4222.
"""

from __future__ import annotations

import socket

__all__ = ["LOOPBACK", "free_port", "port_open"]

#: The only interface the kit binds: nothing it starts is reachable from the network.
LOOPBACK = "127.0.0.1"

# Ports handed out recently by this process. The kernel can give the same ephemeral port to two
# bind(0) calls in a row once the first socket is closed; remembering them avoids handing one port
# to two servers of the same test (e.g. a cluster's client and route ports).
_issued_ports: set[int] = set()


def free_port(host: str = LOOPBACK) -> int:
    """Return a loopback TCP port that is free right now and was not handed out before.

    There is an unavoidable window between closing the probe socket and the child binding the
    port; callers start their child immediately to keep it short.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _issued_ports:
            _issued_ports.add(port)
            return port
    raise RuntimeError("could not find a fresh free port")


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
