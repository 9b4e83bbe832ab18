"""The dev lattice as a place to watch replication and failover, driven only through the CLI:
``nats-kvcache dev --instances 3`` in one process, then ``call --instance N``, ``status`` and
``instance kill|restart|add|ls`` as separate processes, the way a user types them.

Each instance is a provider beside its own leaf nats-server, so "which instance answered" is
checked, not assumed: every instance's status document counts the calls it served.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_cli import (
    CLI,
    START_TIMEOUT,
    Dev,
    _alive,
    _cleanup,
    _cli,
    _env,
    _free_port,
    _start_dev,
)


def _wait_for(what: str, check: Callable[[], bool], dev: Dev, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}; dev output:\n{dev.output.read_text()}"
        time.sleep(0.1)


def _state(dev: Dev) -> dict:
    dev.state = json.loads(dev.state_path.read_text())
    return dev.state


def _calls_by_instance(dev: Dev) -> dict[int, dict[str, int]]:
    """Calls each instance served, per operation, from `nats-kvcache status --json`."""
    result = _cli("status", "--json", cwd=dev.cwd)
    assert result.returncode == 0, result.stderr
    index_of = {i["instance_id"]: i["index"] for i in _state(dev)["instances"]}
    served = {}
    for doc in json.loads(result.stdout):
        ops = doc.get("operations") or {}
        served[index_of[doc["instance"]]] = {
            name.removeprefix("KeyValue."): numbers["calls"]
            for name, numbers in ops.items()
            if numbers.get("calls")
        }
    return served


def test_set_on_one_read_on_another_kill_restart_add(tmp_path: Path) -> None:
    logs = tmp_path / ".dev-lattice"
    logs.mkdir()
    (logs / "provider-7.log").write_text("an earlier run\n")  # must not sit among new logs
    (logs / "leaf-7.log").write_text("an earlier run\n")
    dev = _start_dev(tmp_path, "--instances", "3")
    victim = 0
    try:
        assert sorted(p.name for p in logs.glob("*-7.log")) == []
        instances = dev.state["instances"]
        urls = [i["nats_url"] for i in instances]
        assert len({*urls, dev.state["nats_url"]}) == 4  # one leaf each, and the hub
        assert [i["state"] for i in instances] == ["running"] * 3

        def ok(*args: str) -> str:
            result = dev.call(*args)
            assert result.returncode == 0, (args, result.stderr)
            return result.stdout

        # Set on one, read on another; each call was served by the instance it named.
        assert ok("--instance", "0", "set", "city", "paris") == "OK\n"
        assert ok("--instance", "2", "get", "city") == "paris\n"
        assert ok("--instance", "2", "get", "city") == "paris\n"
        assert _calls_by_instance(dev) == {0: {"Set": 1}, 1: {}, 2: {"Get": 2}}

        # A body over 900 KiB travels both ways through the hub's JetStream object store, from
        # a leaf. (A value that big is not replicated: see the README's limits.)
        big = "x" * (950 * 1024)
        (tmp_path / "big.txt").write_text(big)
        assert ok("--instance", "1", "set", "big", f"@{tmp_path / 'big.txt'}") == "OK\n"
        assert json.loads(ok("--instance", "1", "get", "big", "--json")) == big

        # kill -9 one provider: asked at once, it is reported down (exit 3), never answered by
        # another instance; the lattice keeps serving and shows it down.
        victim = instances[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        down = dev.call("--instance", "1", "get", "city")
        assert down.returncode == 3 and down.stdout == "", down
        assert "instance 1 is down" in down.stderr and "instance restart 1" in down.stderr
        assert len(down.stderr.splitlines()) == 1
        _wait_for(
            "instance 1 shown down", lambda: _state(dev)["instances"][1]["state"] == "down", dev
        )
        assert dev.proc.poll() is None
        assert ok("--instance", "0", "set", "shape", "circle") == "OK\n"
        for _ in range(3):  # without --instance: whichever instance takes it
            assert ok("get", "city") == "paris\n"
        _wait_for(
            "status line shows #1 down",
            lambda: (
                re.search(r"#1 .*DOWN \(killed by signal 9\)", dev.output.read_text()) is not None
            ),
            dev,
        )
        assert "2 other instance(s) keep serving" in dev.output.read_text()
        listing = _cli("instance", "ls", cwd=tmp_path)
        assert listing.returncode == 0 and re.search(r"^1\s+down", listing.stdout, re.M), listing

        # Restart it: it replays what was written while it was down.
        restarted = _cli("instance", "restart", "1", cwd=tmp_path)
        assert restarted.returncode == 0, restarted.stderr
        assert "instance 1 restarted" in restarted.stdout
        assert ok("--instance", "1", "get", "shape") == "circle\n"
        assert ok("--instance", "1", "get", "city") == "paris\n"
        assert _state(dev)["instances"][1]["pid"] != victim

        # Add one: it starts from its peers' state too.
        added = _cli("instance", "add", cwd=tmp_path)
        assert added.returncode == 0 and "instance 3 added" in added.stdout, added.stderr
        assert ok("--instance", "3", "get", "shape") == "circle\n"
        assert (logs / "provider-3.log").exists() and (logs / "leaf-3.log").exists()

        # `instance kill` is the same crash, asked for; the instance stays down.
        killed = _cli("instance", "kill", "2", cwd=tmp_path)
        assert killed.returncode == 0 and "instance 2 killed" in killed.stdout, killed.stderr
        assert dev.call("--instance", "2", "get", "city").returncode == 3
        assert ok("--instance", "3", "get", "city") == "paris\n"

        # An instance that does not exist is a usage error, for both commands.
        for args in (("instance", "restart", "9"), ("call", "--instance", "9", "get", "k")):
            wrong = _cli(*args, cwd=tmp_path)
            assert wrong.returncode == 2 and "no instance 9" in wrong.stderr, wrong

        assert dev.stop(signal.SIGINT) == 0
        for pid in [*dev.pids(), victim]:
            assert not _alive(pid), f"pid {pid} survived the dev lattice"
        gone = _cli("instance", "ls", cwd=tmp_path)
        assert gone.returncode == 2 and "nats-kvcache dev" in gone.stderr
    finally:
        _cleanup(dev)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_live_display_shows_a_dead_instance_in_place(tmp_path: Path) -> None:
    """In a terminal: the status block is redrawn under the commands, and shows #1 down."""
    socket_name = f"kvcache-test-{uuid.uuid4().hex[:8]}"
    tmux = ["tmux", "-L", socket_name, "-f", "/dev/null"]
    env = _env()
    dev = shlex.join([*CLI, "dev", "--instances", "2", "--port", str(_free_port())])
    # The shell stays after dev exits, so its last words and exit code can be read.
    command = (
        f"env PYTHONPATH={shlex.quote(env['PYTHONPATH'])} TERM=xterm {dev};"
        " echo dev-exit=$?; sleep 60"
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "200", "-y", "60", "-c", str(tmp_path), command],
        check=True,
        env=env,
    )
    state_path = tmp_path / ".dev-lattice" / "state.json"

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "0"], capture_output=True, text=True
        ).stdout

    def wait_screen(what: str, check: Callable[[str], bool]) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = screen()
            if check(text):
                return text
            assert time.monotonic() < deadline, f"{what}; screen:\n{text}"
            time.sleep(0.2)

    pids: list[int] = []
    try:
        wait_screen("both instances healthy", lambda t: re.search(r"#1 .*healthy", t) is not None)
        state = json.loads(state_path.read_text())
        pids = [p for i in state["instances"] for p in (i["pid"], i["leaf_pid"])]
        pids.append(state["nats_server"]["pid"])
        killed = _cli("instance", "kill", "1", cwd=tmp_path)
        assert killed.returncode == 0, killed.stderr
        text = wait_screen("#1 shown down", lambda t: re.search(r"#1 .*DOWN", t) is not None)
        assert re.search(r"#0 .*healthy", text)
        assert "call --instance 0 set city paris" in text  # the commands stay on screen
        # The event stays on screen above the block; below it the block is redrawn in place.
        after = text.split("instance 1 killed", 1)[1]
        assert after.count("running instance(s) healthy") == 1, text
        subprocess.run([*tmux, "send-keys", "-t", "0", "C-c"], check=True)
        text = wait_screen("dev exited", lambda t: "dev-exit=" in t)
        assert "dev-exit=0" in text and "\nstopped\n" in text, text
        for pid in pids:
            assert not _alive(pid), f"pid {pid} survived the dev lattice"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
