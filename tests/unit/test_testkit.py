"""The pure parts of the test kit (``wasmbus_testkit``), and the README's copy of its example.

Its parts that start servers and processes are tested in ``tests/integration/test_testkit.py``.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from contract.claims import validate_invocation
from contract.keyvalue import CONTRACT_ID
from contract.wire import TEST_MODE_HOST_ID, HostData, LinkDefinition
from tests.harness.repo import REPO_ROOT
from wasmbus_testkit import (
    HostKeys,
    HostStyle,
    Invoker,
    KeyValueHost,
    NatsLeafnodes,
    NatsServer,
    ProviderProcess,
    build_host_data,
    free_port,
    link_definition,
    shutdown_request,
    wait_for,
)
from wasmbus_testkit.children import tail
from wasmbus_testkit.faultproxy import FrameSplitter

EXAMPLE = REPO_ROOT / "examples" / "toy_provider" / "test_toy_provider.py"
README = REPO_ROOT / "README.md"


def test_frame_splitter_keeps_frames_whole_across_chunk_boundaries() -> None:
    stream = (
        b"INFO {}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\n"
        b"HMSG c 2 _INBOX.x 12 14\r\nNATS/1.0\r\n\r\nhi\r\n+OK\r\n"
    )
    for step in (1, 3, 7, len(stream)):
        splitter = FrameSplitter()
        frames = [
            f for i in range(0, len(stream), step) for f in splitter.feed(stream[i : i + step])
        ]
        assert [f.op for f in frames] == [b"INFO", b"MSG", b"PING", b"HMSG", b"+OK"]
        assert b"".join(f.data for f in frames) == stream
        assert frames[3].subject == b"c"


def test_free_port_is_unique_and_bindable() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20


async def test_wait_for_returns_value_and_times_out_with_message() -> None:
    calls = 0

    async def third_time() -> int:
        nonlocal calls
        calls += 1
        return calls if calls >= 3 else 0

    assert await wait_for(third_time, 1, interval=0.001) == 3
    with pytest.raises(TimeoutError, match="never"):
        await wait_for(lambda: False, 0.05, message="never")


# -- HostData in both host styles -------------------------------------------------------------


@pytest.mark.parametrize("style", list(HostStyle))
def test_host_data_round_trips_through_the_stdin_line_of_each_style(style: HostStyle) -> None:
    keys = HostKeys()
    link = link_definition(keys.provider.public_key, keys.actor.public_key, contract_id="x:y")
    hd = build_host_data(keys, "127.0.0.1:4222", style=style, links=[link], log_level="debug")
    line = hd.to_stdin_line(padded=style.padded)

    assert line.endswith(b"\n" if style is HostStyle.OTP else b"\r\n")
    assert HostData.from_stdin_line(line) == hd
    assert hd.lattice_rpc_prefix == style.default_lattice
    assert hd.cluster_issuers == [style.issuer(keys).public_key]
    assert hd.invocation_seed == style.issuer(keys).seed
    assert hd.is_test_mode == (style is HostStyle.TEST)


def test_the_two_styles_differ_where_the_spec_says() -> None:
    keys = HostKeys()
    otp, test = HostStyle.OTP, HostStyle.TEST
    assert (otp.host_id(keys), test.host_id(keys)) == (keys.host.public_key, TEST_MODE_HOST_ID)
    assert otp.issuer(keys).public_key.startswith("C")
    assert test.issuer(keys).public_key.startswith("N")
    assert (otp.target_contract_id(CONTRACT_ID), test.target_contract_id(CONTRACT_ID)) == (
        CONTRACT_ID,
        "",
    )
    assert test.health_body == b"{}"
    assert otp.health_body == bytes.fromhex("81ab706c616365686f6c646572c3")
    link = LinkDefinition("Ma", "Vb", "default", CONTRACT_ID, {"k": "v"})
    assert json.loads(test.encode_link(link))["values"] == {"k": "v"}
    assert otp.encode_link(link) == link.encode_msgpack()


def test_padded_line_is_standard_base64_and_unpadded_line_is_not_padded() -> None:
    hd = build_host_data(HostKeys(), "127.0.0.1:1")
    padded, unpadded = hd.to_stdin_line(padded=True), hd.to_stdin_line(padded=False)
    assert base64.b64decode(padded.strip(), validate=True) == hd.to_json()
    assert not unpadded.rstrip().endswith(b"=")


def test_shutdown_request_names_the_host_or_is_empty_for_old_hosts() -> None:
    assert json.loads(shutdown_request("NHOST")) == {"host_id": "NHOST"}
    assert shutdown_request(None) == b""


# -- servers and processes, as configured (nothing is started here) --------------------------


def test_server_config_puts_one_setting_blocks_on_one_line(tmp_path: Path) -> None:
    hub = NatsServer(tmp_path / "hub", leaf_port=7422, store_dir=tmp_path / "js")
    text = hub.config_text()
    assert 'leafnodes { listen: "127.0.0.1:7422" }' in text
    assert f'jetstream {{ store_dir: "{tmp_path / "js"}" }}' in text
    assert hub.write_config().read_text() == text
    leaf = NatsServer(tmp_path / "leaf", jetstream=False, leaf_remotes=["nats-leaf://h:1"])
    assert 'leafnodes { remotes: [{url: "nats-leaf://h:1"}] }' in leaf.config_text()
    both = NatsServer(tmp_path / "b", leaf_port=7423, leaf_remotes=["nats-leaf://h:1"])
    assert "leafnodes {\n  listen: " in both.config_text()  # two settings: one per line


def test_server_log_and_store_can_live_outside_its_workdir(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "private", log_path=tmp_path / "logs" / "hub.log")
    assert server.log_path == tmp_path / "logs" / "hub.log"
    assert server.store_dir == tmp_path / "private" / "store"
    assert server.config_path.parent == tmp_path / "private"
    assert server.returncode is None and server.pid is None  # not started


def test_leaf_topology_grows_one_leaf_at_a_time_with_its_own_options(tmp_path: Path) -> None:
    hub_port = free_port()
    topology = NatsLeafnodes(
        tmp_path, leaves=0, name="dev", hub_options={"port": hub_port}, new_process_group=True
    )
    assert topology.leaves == [] and topology.hub.port == hub_port
    assert topology.hub.server_name == "dev-hub" and topology.hub.new_process_group
    first = topology.add_leaf()
    second = topology.add_leaf(server_name="dev-leaf-x", log_path=tmp_path / "leaf-x.log")
    assert topology.leaves == [first, second]
    assert (first.server_name, second.server_name) == ("dev-leaf0", "dev-leaf-x")
    assert second.log_path == tmp_path / "leaf-x.log" and second.new_process_group
    assert first.port != hub_port  # hub_options are the hub's alone
    for leaf in (first, second):
        assert leaf.leaf_remotes == [topology.hub.leaf_url] and not leaf.jetstream
        assert leaf.mappings == {"$JS.API.>": "$JS.hub.API.>"}
    with pytest.raises(ValueError):
        NatsLeafnodes(tmp_path, leaves=-1)


def test_one_log_holds_both_streams_of_a_provider(tmp_path: Path) -> None:
    proc = ProviderProcess(b"x", ["true"], log_path=tmp_path / "provider-0.log")
    assert proc.stdout_path == proc.stderr_path == tmp_path / "provider-0.log"
    assert proc.log_dir == tmp_path
    apart = ProviderProcess(b"x", ["true"], log_dir=tmp_path, name="p")
    assert (apart.stdout_path.name, apart.stderr_path.name) == ("p.stdout.log", "p.stderr.log")


def test_tail_reads_only_the_end_and_can_keep_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert tail(log, 20).endswith("line 999\n") and len(tail(log, 20)) == 20
    assert tail(log, lines=2) == "line 998\nline 999"
    assert tail(tmp_path / "missing") == ""


# -- invocations ------------------------------------------------------------------------------


def test_invoker_builds_invocations_a_provider_accepts() -> None:
    keys = HostKeys()
    invoker = Invoker(
        object(),  # type: ignore[arg-type]  # build() sends nothing
        lattice_prefix="default",
        provider_key=keys.provider.public_key,
        contract_id="example:echo",
        signer=keys.cluster,
        actor_key=keys.actor.public_key,
    )
    inv = invoker.build("Echo.Echo", b"\xa4ping")
    claims = validate_invocation(inv)
    assert claims["iss"] == keys.cluster.public_key
    assert inv.target.contract_id == "example:echo"
    assert inv.host_id == keys.cluster.public_key
    assert invoker.subject == f"wasmbus.rpc.default.{keys.provider.public_key}.default"


@pytest.mark.parametrize("test_mode", [False, True])
def test_keyvalue_host_signs_as_the_host_style_does(tmp_path: Path, test_mode: bool) -> None:
    def never(line: bytes) -> ProviderProcess:
        raise AssertionError("not started")

    host = KeyValueHost(NatsServer(tmp_path), never, test_mode=test_mode)
    inv = host.invocation("KeyValue.Get", b"\xa1k")
    assert validate_invocation(inv)["iss"] == host.issuer.public_key
    assert inv.target.contract_id == ("" if test_mode else CONTRACT_ID)
    assert host.host_data.link_definitions[0].contract_id == CONTRACT_ID


def test_importing_the_kit_does_not_import_pytest() -> None:
    code = "import sys, wasmbus_testkit; sys.exit('pytest' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0


# -- the README's example ---------------------------------------------------------------------


def test_readme_shows_the_example_test_verbatim() -> None:
    section = README.read_text().split("## Testing your own provider with the kit", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no python block in the README's test-kit section"
    assert block.group(1) == EXAMPLE.read_text()
