"""The operator CLI end to end, the way a user runs it: ``nats-kvcache dev`` in one process,
``nats-kvcache call ...`` as separate processes reading the state file from the working
directory, then Ctrl-C. Nothing is faked: a real nats-server and real provider processes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "provider.cli.main"]
START_TIMEOUT = 40.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NATS_KVCACHE_STATE", None)
    env.pop("NATS_KVCACHE_SEED", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class Dev:
    proc: subprocess.Popen
    cwd: Path
    state_path: Path
    state: dict
    output: Path

    def pids(self) -> list[int]:
        return [i["pid"] for i in self.state["instances"]] + [self.state["nats_server"]["pid"]]

    def call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "call", *args],
            cwd=self.cwd,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def stop(self, signum: int = signal.SIGINT, timeout: float = 10.0) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout)


def _start_dev(cwd: Path, *extra: str) -> Dev:
    output = cwd / "dev.out"
    state_path = cwd / ".dev-lattice" / "state.json"
    if "--state" in extra:
        state_path = cwd / extra[extra.index("--state") + 1]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "dev", "--port", str(_free_port()), *extra],
            cwd=cwd,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not state_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"dev lattice did not start:\n{output.read_text()}")
        time.sleep(0.1)
    state = json.loads(state_path.read_text())
    return Dev(proc, cwd, state_path, state, output)


def _cleanup(dev: Dev) -> None:
    """Only if the test failed half-way: kill exactly the processes this lattice started."""
    if dev.proc.poll() is None:
        dev.proc.kill()
        dev.proc.wait()
    for pid in dev.pids():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    lattice = _start_dev(tmp_path)
    try:
        yield lattice
    finally:
        _cleanup(lattice)


def test_dev_lattice_call_round_trip_and_clean_stop(dev: Dev) -> None:
    seed = dev.state["seed"]
    assert dev.state_path.stat().st_mode & 0o777 == 0o600
    assert len(dev.state["instances"]) == 1

    def ok(*args: str) -> str:
        result = dev.call(*args)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert seed not in result.stdout + result.stderr
        return result.stdout

    assert ok("set", "k", "hello", "--expires", "10") == "OK\n"
    assert ok("get", "k") == "hello\n"
    assert ok("get", "missing") == "(nil)\n"
    assert ok("incr", "n", "5") == "5\n"
    assert ok("increment", "n", "-7") == "-2\n"
    assert ok("contains", "k") == "true\n"
    assert ok("list-add", "l", "a") == "1\n"
    assert ok("ListAdd", "l", "b c") == "2\n"
    assert ok("list-range", "l", "0", "-1") == "a\nb c\n"
    assert ok("list-range", "nothing", "0", "-1") == "(empty list)\n"
    assert ok("set-add", "s", "x") == "1\n"
    assert ok("SET-ADD", "s", "y") == "1\n"
    assert sorted(ok("set-query", "s").split("\n")[:-1]) == ["x", "y"]
    assert ok("del", "k") == "true\n"

    wrong_type = dev.call("incr", "l", "1")
    assert wrong_type.returncode == 1
    assert wrong_type.stderr.startswith("error: ") and "WRONGTYPE" in wrong_type.stderr

    usage = dev.call("list-range", "l", "0")
    assert usage.returncode == 2 and "usage:" in usage.stderr

    # A provider nobody runs: "no responders" is exit code 3, not a hang or a traceback.
    other = "VAFK5NXCMKW3FFZQLSYNVV5SMPYVDUNQMX2VMYGGEJ2O3RVIVIGRH7OM"
    unreachable = dev.call("get", "k", "--provider-key", other, "--timeout", "1")
    assert unreachable.returncode == 3, unreachable.stderr
    assert "Traceback" not in unreachable.stderr

    assert dev.stop(signal.SIGINT) == 0
    for pid in dev.pids():
        assert not _alive(pid), f"pid {pid} survived the dev lattice"
    out = dev.output.read_text()
    assert "nats-kvcache call set" in out and "provider-0.log" in out
    assert "healthy" in out
    assert seed not in out
    assert not dev.state_path.exists()
    assert "shutdown requested" in (dev.state_path.parent / "provider-0.log").read_text()


def test_dev_two_instances_sigterm(tmp_path: Path) -> None:
    dev = _start_dev(tmp_path, "--instances", "2", "--state", "lattice/state.json")
    try:
        assert len({i["pid"] for i in dev.state["instances"]}) == 2
        # Every instance is linked to the demo actor, whichever one takes the call.
        for _ in range(4):
            result = dev.call("contains", "x", "--state", "lattice/state.json")
            assert (result.returncode, result.stdout) == (0, "false\n"), result.stderr
        assert dev.stop(signal.SIGTERM) == 0
        for pid in dev.pids():
            assert not _alive(pid)
        for index in (0, 1):
            log = (tmp_path / "lattice" / f"provider-{index}.log").read_text()
            assert "shutdown requested" in log
    finally:
        _cleanup(dev)


def test_call_without_settings_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "call", "get", "k"], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "--provider-key" in result.stderr and "nats-kvcache dev" in result.stderr
