"""Entry script of the provider executable that ``nats-kvcache par`` builds (PyInstaller).

Not imported by the CLI: PyInstaller runs this file as ``__main__`` inside the one-file
executable. A one-file executable is two processes: a bootloader that unpacks the bundle into
``$TMPDIR/_MEIxxxxxx`` and a child that runs Python from there, which the bootloader removes
when the child exits. Three things need care because a wasmCloud host ``kill -9``s the process
it started (the bootloader) right after a shutdown request:

* **No orphans.** The child asks the kernel for SIGKILL when its parent dies
  (``PR_SET_PDEATHSIG``), so a killed bootloader never leaves a provider serving the lattice.
* **No unpacked copies piling up.** A killed bootloader cannot delete its ``_MEI`` dir, so each
  provider holds an exclusive ``flock`` on a marker file in its own dir for its whole life, and
  at start removes every other dir with that marker whose lock is free (its owner is dead).
  Dirs of other programs, and of live providers, are never touched.
* **Self re-execution.** The provider starts helpers as ``sys.executable -m provider.<module>``
  (the signature verification worker). Frozen, ``sys.executable`` is this executable, so
  ``-m provider.<module>`` is dispatched here instead of starting a second provider.

The host itself always starts the executable with no arguments (protocol spec §1).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import runpy
import shutil
import signal
import sys
from pathlib import Path

LOCK_NAME = ".nats-kvcache-provider.lock"
PR_SET_PDEATHSIG = 1

#: The locked marker's descriptor, open (and so locked) for the life of the process.
_lock_fd: int | None = None


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):  # best effort: never a reason not to start
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _hold_lock(bundle: Path) -> int | None:
    """Lock a marker in our own bundle dir; the fd stays open (and locked) until we exit."""
    try:
        pending = bundle / f"{LOCK_NAME}.{os.getpid()}"
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Published under its final name only once locked: a sweeper never sees it unlocked.
        os.replace(pending, bundle / LOCK_NAME)
        return fd
    except OSError:
        return None


def _sweep_stale(bundle: Path) -> None:
    """Remove unpacked copies left by providers whose bootloader was killed."""
    for other in bundle.parent.glob("_MEI*"):
        if other == bundle:
            continue
        try:
            fd = os.open(other / LOCK_NAME, os.O_RDONLY)
        except OSError:
            continue  # not ours, or still being unpacked
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live provider holds it
        finally:
            os.close(fd)
        shutil.rmtree(other, ignore_errors=True)


def main() -> None:
    _die_with_parent()
    args = sys.argv[1:]
    if len(args) >= 2 and args[0] == "-m" and args[1].startswith("provider."):
        sys.argv = [sys.argv[0], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return
    global _lock_fd
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle is not None:
        _lock_fd = _hold_lock(Path(bundle))
        _sweep_stale(Path(bundle))
    from provider.main import main as provider_main

    provider_main()


if __name__ == "__main__":
    main()
