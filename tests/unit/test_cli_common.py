"""The shared CLI helpers: the command printed in hints, state file lookup, metrics ports and
the status display (redrawn in place on a terminal, printed only on change otherwise)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from contract import hostdata
from provider.cli import common, dev, lattice
from provider.cli import state as statefile


def test_program_is_the_running_script_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / ".venv" / "bin" / "nats-kvcache"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "argv", [str(script), "dev"])
    assert common.program() == ".venv/bin/nats-kvcache"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert common.program() == str(script)
    monkeypatch.setenv("PATH", str(script.parent))
    assert common.program() == "nats-kvcache"  # on PATH: the bare name runs


def test_program_run_as_a_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    python.write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setattr(sys, "argv", ["/x/provider/cli/main.py"])
    assert common.program() == "bin/python3 -m provider.cli"
    (python.parent / "nats-kvcache").write_text("")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert common.program() == "bin/nats-kvcache"


def test_state_lookup_walks_up_and_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(statefile.STATE_ENV, raising=False)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    statefile.save(tmp_path / statefile.DEFAULT_STATE_PATH, statefile.DevState(lattice="x"))
    found = statefile.locate(None, start=deep)
    assert found.path == tmp_path / statefile.DEFAULT_STATE_PATH and not found.explicit
    assert statefile.read(found).lattice == "x"

    monkeypatch.setenv(statefile.STATE_ENV, str(tmp_path / "other.json"))
    by_env = statefile.locate(None, start=deep)
    assert by_env.explicit and by_env.path == tmp_path / "other.json"
    with pytest.raises(statefile.StateError, match=r"\$NATS_KVCACHE_STATE"):
        statefile.read(by_env)
    assert statefile.locate("flag.json").source == "--state"


def test_state_not_found_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(statefile.STATE_ENV, raising=False)
    location = statefile.locate(None, start=tmp_path)
    assert not location.path.exists()
    assert location.searched[0] == tmp_path and location.searched[-1] == Path("/")
    assert f"in {tmp_path} or any parent up to /" in location.not_found()


def test_metrics_addresses_are_base_plus_index() -> None:
    assert lattice.metrics_addresses(None, 2) == [None, None]
    assert lattice.metrics_addresses("127.0.0.1:9464", 3) == [
        "127.0.0.1:9464",
        "127.0.0.1:9465",
        "127.0.0.1:9466",
    ]
    assert lattice.metrics_addresses(":9000", 1) == [":9000"]
    assert lattice.metrics_url(":9000") == "http://0.0.0.0:9000/metrics"
    for bad in ("nonsense", "host:x", "host:65535"):
        with pytest.raises(lattice.LatticeError, match="NATS_KVCACHE_METRICS_ADDR"):
            lattice.metrics_addresses(bad, 2)


def test_status_display_prints_only_changes_when_not_a_tty() -> None:
    out = io.StringIO()
    display = dev.StatusDisplay(out, tty=False)
    display.show("header", ["  #0 healthy"])
    display.show("header", ["  #0 healthy"])
    assert out.getvalue().count("header") == 1
    display.show("header", ["  #0 exited(1)"])
    assert out.getvalue().count("header") == 2 and "\x1b" not in out.getvalue()


def test_status_display_redraws_in_place_on_a_tty() -> None:
    out = io.StringIO()
    display = dev.StatusDisplay(out, tty=True)
    display.show("header", ["  #0", "  #1"])
    assert "\x1b" not in out.getvalue()
    display.show("header", ["  #0", "  #1"])
    assert out.getvalue().count("\x1b[3A\r\x1b[J") == 1  # back over the 3 lines, then erase
    display.interrupt()  # something else was printed: the next block goes below it
    display.show("header", ["  #0", "  #1"])
    assert out.getvalue().count("\x1b[3A") == 1


def test_one_shared_usage_error_default_url_and_url_normalisation() -> None:
    from provider.cli import call, health, par, status

    assert call.UsageError is health.UsageError is par.UsageError is common.UsageError
    for module in (call, health, status):
        assert module.DEFAULT_NATS_URL is hostdata.DEFAULT_NATS_URL
        assert module.normalize_nats_url is hostdata.normalize_nats_url


def test_nats_urls_are_normalised_in_one_place() -> None:
    from provider.replication import config

    assert (
        hostdata.normalize_nats_url(" a:1 , nats://b:2,,tls://c:3 ")
        == "nats://a:1,nats://b:2,tls://c:3"
    )
    assert hostdata.normalize_nats_url("  ") == ""
    assert hostdata.normalize_nats_url(None) == ""
    assert config.normalize_nats_url is hostdata.normalize_nats_url


def test_state_file_names_each_instance_and_says_which_exist(tmp_path: Path) -> None:
    saved = statefile.DevState(
        control="/run/x.sock",
        instances=[{"index": 0, "nats_url": "nats://127.0.0.1:1"}, {"index": 2}],
    )
    statefile.save(tmp_path / "s.json", saved)
    loaded = statefile.load(tmp_path / "s.json", required=True)
    assert loaded.control == "/run/x.sock"
    assert loaded.instance(0)["nats_url"] == "nats://127.0.0.1:1"
    with pytest.raises(statefile.StateError, match=r"no instance 1 .*instances: 0, 2"):
        loaded.instance(1)


def test_leaf_servers_reach_the_hubs_jetstream(tmp_path: Path) -> None:
    """A leaf has no JetStream of its own: the default API is mapped onto the hub's domain, so
    chunked bodies (the object store) work for a provider connected to its leaf."""
    hub = lattice.hub_config(4222, 7422, str(tmp_path / "js"))
    assert 'listen: "127.0.0.1:4222"' in hub and 'leafnodes { listen: "127.0.0.1:7422" }' in hub
    assert f'domain: "{lattice.JS_DOMAIN}"' in hub
    leaf = lattice.leaf_config(3, 4300, 7422)
    assert '"$JS.API.>": "$JS.hub.API.>"' in leaf and "nats-leaf://127.0.0.1:7422" in leaf
    assert 'server_name: "dev-leaf-3"' in leaf


def test_a_dead_instance_is_shown_down_with_the_reason(tmp_path: Path) -> None:
    from contract.nkeys import KeyPair

    instance = lattice.Instance(1, KeyPair.generate("server"), tmp_path / "p.log", leaf_port=4301)
    instance.down = "killed by signal 9"
    line = dev.instance_line(instance, None, "healthy")
    assert line.startswith("  #1 ") and ":4301" in line and "DOWN (killed by signal 9)" in line
    assert instance.state == "down" and instance.nats_url == "nats://127.0.0.1:4301"
