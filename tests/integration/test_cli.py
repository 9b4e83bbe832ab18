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
        """Every process of the lattice: providers, their leaf servers and the hub."""
        instances = self.state["instances"]
        found = [i.get(key) for i in instances for key in ("pid", "leaf_pid")]
        return [p for p in found if p] + [self.state["nats_server"]["pid"]]

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


def _start_dev(cwd: Path, *extra: str, env: dict[str, str] | None = None) -> Dev:
    output = cwd / "dev.out"
    state_path = cwd / ".dev-lattice" / "state.json"
    if "--state" in extra:
        state_path = cwd / extra[extra.index("--state") + 1]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "dev", "--port", str(_free_port()), *extra],
            cwd=cwd,
            env=env or _env(),
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

    assert ok("set", "k", "hello", "--expires", "600") == "OK\n"
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


# ----------------------------------------------------------------------------- issue #12
PROVIDER_KEY = "VAFK5NXCMKW3FFZQLSYNVV5SMPYVDUNQMX2VMYGGEJ2O3RVIVIGRH7OM"
ACTOR_KEY = "MB2ZQB6ROOMAYBO4ZCTFYWN7YIVBWA3MTKZYAQKJMTIHE2ELLRW2E3ZW"


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        cwd=cwd,
        env=env or _env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _seed_file(tmp_path: Path) -> Path:
    from contract.nkeys import KeyPair

    path = tmp_path / "seed"
    path.write_text(KeyPair.generate("cluster").seed + "\n")
    path.chmod(0o600)
    return path


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_no_nats_every_command_exits_3_with_one_line(tmp_path: Path) -> None:
    dead = f"nats://127.0.0.1:{_free_port()}"
    seed = _seed_file(tmp_path)
    commands = {
        "status": ["status", "--nats-url", dead],
        "health": ["health", "--nats-url", dead, "--provider-key", PROVIDER_KEY],
        "call": [
            "call", "get", "k", "--nats-url", dead, "--provider-key", PROVIDER_KEY,
            "--actor", ACTOR_KEY, "--seed-file", str(seed),
        ],
    }  # fmt: skip
    for name, args in commands.items():
        result = _cli(*args, cwd=tmp_path)
        assert result.returncode == 3, (name, result.stderr)
        line = _one_line_error(result)
        assert line.startswith(f"nats-kvcache {name}: cannot connect to NATS at {dead}"), line
        assert "connection refused" in line and "--nats-url" in line, line
        assert result.stdout == ""


def test_version(tmp_path: Path) -> None:
    from provider import __version__

    result = _cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, f"nats-kvcache {__version__}\n")


def test_bad_flag_shows_the_subcommand_usage(tmp_path: Path) -> None:
    for command in (["call", "get", "k"], ["status"], ["health"]):
        result = _cli(*command, "--bogus", cwd=tmp_path)
        assert result.returncode == 2
        assert result.stderr.startswith(f"usage: nats-kvcache {command[0]} "), result.stderr
        assert f"nats-kvcache {command[0]}: error: unrecognized arguments: --bogus" in (
            result.stderr
        )


def test_incr_out_of_range_is_a_plain_usage_error(tmp_path: Path) -> None:
    result = _cli("call", "incr", "counter", "99999999999", cwd=tmp_path)
    assert result.returncode == 2
    line = _one_line_error(result)
    assert "increment must be a 32-bit integer (-2147483648..2147483647)" in line
    assert "deserialization" not in line and "i32" not in line
    assert _cli("call", "incr", "counter", "x", cwd=tmp_path).returncode == 2


def test_seed_on_the_command_line_warns(tmp_path: Path) -> None:
    from contract.nkeys import KeyPair

    seed = KeyPair.generate("cluster").seed
    dead = f"nats://127.0.0.1:{_free_port()}"
    common = ["call", "get", "k", "--nats-url", dead, "--provider-key", PROVIDER_KEY]
    common += ["--actor", ACTOR_KEY]
    on_line = _cli(*common, "--seed", seed, cwd=tmp_path)
    assert on_line.returncode == 3
    assert "warning: --seed on the command line is visible in ps and shell history" in (
        on_line.stderr
    )
    assert seed not in on_line.stdout + on_line.stderr
    from_env = _cli(*common, cwd=tmp_path, env={**_env(), "NATS_KVCACHE_SEED": seed})
    from_file = _cli(*common, "--seed-file", str(_seed_file(tmp_path)), cwd=tmp_path)
    for result in (from_env, from_file):
        assert result.returncode == 3 and "warning" not in result.stderr, result.stderr
    both = _cli(*common, "--seed", seed, "--seed-file", str(tmp_path / "seed"), cwd=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr
    missing = _cli(*common, "--seed-file", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such file" in _one_line_error(missing)


def _fake_state(directory: Path) -> tuple[Path, str]:
    """A state file pointing at a NATS URL nobody serves: the error message names the URL,
    which proves which state file was read."""
    from provider.cli import state as statefile

    url = f"nats://127.0.0.1:{_free_port()}"
    path = directory / ".dev-lattice" / "state.json"
    statefile.save(path, statefile.DevState(nats_url=url, provider_key=PROVIDER_KEY))
    return path, url


def test_state_file_found_from_a_subdirectory_and_via_env(tmp_path: Path) -> None:
    _, url = _fake_state(tmp_path / "repo")
    deep = tmp_path / "repo" / "src" / "deeper"
    deep.mkdir(parents=True)
    for command in ("status", "health"):
        result = _cli(command, cwd=deep)
        assert result.returncode == 3, result.stderr
        assert f"cannot connect to NATS at {url}" in _one_line_error(result)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path, env_url = _fake_state(tmp_path / "other")
    env = {**_env(), "NATS_KVCACHE_STATE": str(path)}
    result = _cli("status", cwd=elsewhere, env=env)
    assert result.returncode == 3 and f"at {env_url}" in _one_line_error(result)

    gone = {**_env(), "NATS_KVCACHE_STATE": str(tmp_path / "missing.json")}
    result = _cli("status", cwd=elsewhere, env=gone)
    assert result.returncode == 2
    line = _one_line_error(result)
    assert str(tmp_path / "missing.json") in line and "$NATS_KVCACHE_STATE" in line

    # Not found: the message says where it looked.
    result = _cli("call", "get", "k", cwd=elsewhere)
    assert result.returncode == 2
    line = _one_line_error(result)
    assert f"no .dev-lattice/state.json in {elsewhere} or any parent" in line, line
    assert "nats-kvcache dev" in line


def test_call_json_stdin_and_file_values(dev: Dev, tmp_path: Path) -> None:
    def call(*args: str, stdin: str | None = None) -> str:
        result = _cli("call", *args, cwd=dev.cwd, stdin=stdin)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    assert call("set", "literal", "(nil)") == "OK\n"
    assert call("get", "literal") == "(nil)\n"
    assert call("get", "missing") == "(nil)\n"  # the same text, told apart only by --json
    assert json.loads(call("get", "literal", "--json")) == "(nil)"
    assert json.loads(call("get", "missing", "--json")) is None
    assert json.loads(call("set", "x", "1", "--json")) == "OK"
    assert json.loads(call("incr", "n", "3", "--json")) == 3
    assert json.loads(call("contains", "x", "--json")) is True
    assert json.loads(call("list-add", "l", "a b", "--json")) == 1
    assert json.loads(call("list-range", "l", "0", "-1", "--json")) == ["a b"]

    # '-' reads stdin, '@FILE' a file, both as-is (the trailing newline is kept).
    assert call("set", "piped", "-", stdin="line one\nline two\n") == "OK\n"
    assert json.loads(call("get", "piped", "--json")) == "line one\nline two\n"
    big = "x" * (950 * 1024)  # over the 900 KiB chunking threshold
    (tmp_path / "big.txt").write_text(big)
    assert call("set", "big", f"@{tmp_path / 'big.txt'}") == "OK\n"
    assert json.loads(call("get", "big", "--json")) == big
    assert call("list-add", "l", f"@{tmp_path / 'big.txt'}") == "2\n"
    assert call("set", "at", "@literal", "--literal") == "OK\n"
    assert call("get", "at") == "@literal\n"
    missing = _cli("call", "set", "k", "@/nonexistent/file", cwd=dev.cwd)
    assert missing.returncode == 2 and "no such file" in _one_line_error(missing)


def test_dev_metrics_ports_banner_commands_and_restart(tmp_path: Path) -> None:
    import urllib.request

    base = _free_port()
    while True:  # base and base + 1 both free
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
                break
            except OSError:
                base = _free_port()
    env = {**_env(), "NATS_KVCACHE_METRICS_ADDR": f"127.0.0.1:{base}"}
    dev = _start_dev(tmp_path, "--instances", "2", "--restart", "on-failure", env=env)
    try:
        out = dev.output.read_text()
        for index, port in ((0, base), (1, base + 1)):
            assert f"http://127.0.0.1:{port}/metrics" in out, out
            assert dev.state["instances"][index]["metrics"] == f"127.0.0.1:{port}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert b"kvcache_entries" in r.read()
        for index in (0, 1):
            log = (tmp_path / ".dev-lattice" / f"provider-{index}.log").read_text()
            assert "address already in use" not in log.lower()

        # The printed commands run as pasted (from the directory dev was started in).
        tries = out.split("try:\n", 1)[1].splitlines()
        first = tries[0].strip()
        assert first.endswith(" call set greeting hello --expires 60"), first
        assert any(line.strip().endswith("call incr visits 1") for line in tries)
        result = subprocess.run(
            first, shell=True, cwd=tmp_path, env=_env(), capture_output=True, text=True
        )
        assert (result.returncode, result.stdout) == (0, "OK\n"), result.stderr

        # With --restart on-failure, an instance that dies is started again (the default
        # leaves it down: see test_dev_lattice.py) and the lattice keeps answering.
        victim = dev.state["instances"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            state = json.loads(dev.state_path.read_text())
            if state["instances"][0]["pid"] != victim:
                break
            assert time.monotonic() < deadline, dev.output.read_text()
            time.sleep(0.2)
        dev.state = state
        assert dev.proc.poll() is None
        assert "restarting it (1/5)" in dev.output.read_text()
        for _ in range(4):
            assert dev.call("contains", "nothing").stdout == "false\n"
        assert dev.stop(signal.SIGINT) == 0
        for pid in [*dev.pids(), victim]:
            assert not _alive(pid)
    finally:
        _cleanup(dev)
