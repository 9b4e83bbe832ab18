"""Testing the toy ``example:echo`` provider with wasmbus_testkit, as a host would run it."""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from wasmbus_testkit import FakeHost, InvocationError, KeyPair
from wasmbus_testkit.pytest_plugin import FakeHostFactory

pytest_plugins = ["wasmbus_testkit.pytest_plugin"]
pytestmark = pytest.mark.asyncio

CONTRACT_ID = "example:echo"


@pytest.fixture(scope="session")
def provider_command() -> list[str]:
    """How the host starts the provider: any command, here a Python script."""
    return [sys.executable, str(Path(__file__).with_name("echo_provider.py"))]


@pytest_asyncio.fixture(params=["otp", "test-mode"])
async def host(request: pytest.FixtureRequest, fake_host_factory: FakeHostFactory) -> FakeHost:
    """A healthy provider started by each kind of host, with ``host.keys.actor`` linked."""
    return await fake_host_factory(
        contract_id=CONTRACT_ID,
        test_mode=request.param == "test-mode",
        link_values={"GREETING": "hello"},
    )


async def test_echo_returns_its_argument(host: FakeHost) -> None:
    assert await host.invoker().call_msgpack("Echo.Echo", "ping") == "ping"


async def test_each_link_has_its_own_values(host: FakeHost) -> None:
    assert await host.invoker().call_msgpack("Echo.Greet", "world") == "hello, world"
    other = KeyPair.generate("module")
    await host.link(other, {"GREETING": "hi"})  # returns once the link is in force
    assert await host.invoker(other).call_msgpack("Echo.Greet", "you") == "hi, you"


async def test_calls_need_a_link(host: FakeHost) -> None:
    echo = host.invoker()
    await host.unlink(host.keys.actor)
    with pytest.raises(InvocationError, match="unlinked actor"):
        await echo.call("Echo.Echo", msgpack.packb("x"))


async def test_untrusted_issuer_and_unknown_operation_are_error_replies(host: FakeHost) -> None:
    forger = host.invoker(signer=KeyPair.generate("cluster"))
    assert "not in list of cluster issuers" in (await forger.invoke("Echo.Echo")).error
    with pytest.raises(InvocationError, match="unknown operation"):
        await host.invoker().call("Echo.Shout", msgpack.packb("x"))


async def test_health_then_shutdown_exits_cleanly(host: FakeHost) -> None:
    assert (await host.health()).healthy
    assert await host.shutdown() == b"shutting down"
    assert await host.wait_exit() == 0
