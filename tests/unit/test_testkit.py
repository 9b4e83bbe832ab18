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
    NatsServer,
    ProviderProcess,
    build_host_data,
    free_port,
    link_definition,
    wait_for,
)
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
