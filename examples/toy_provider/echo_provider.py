"""A toy wasmCloud capability provider of the contract ``example:echo``, in one file.

It exists to show how a provider of *any* contract is tested with ``wasmbus_testkit``
(``test_toy_provider.py`` next to it), so it is as small as the protocol allows and uses only
nats-py and msgpack. Operations (msgpack string in, msgpack string out):

* ``Echo.Echo`` - the argument, unchanged;
* ``Echo.Greet`` - ``"{GREETING}, {argument}"``, ``GREETING`` from the caller's link values.

What it does follows the wasmbus protocol (spec sections in brackets): read one HostData line
from stdin and never wait for EOF [§2]; subscribe to the RPC subject in queue group ``rpc``,
link put/del, shutdown and health last [§4]; check the caller before dispatching [§6]; answer
with an InvocationResponse [§5.3]; JSON instead of msgpack for links and health in test mode
[§14]. A real provider also verifies the claims' Ed25519 signature and hash [§7.3]; the toy
only checks that the issuer is trusted, and it does not chunk large bodies [§11].
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from typing import Any

import msgpack
import nats

TEST_MODE_HOST_ID = "_TEST_"


def read_host_data() -> dict[str, Any]:
    """The one stdin line: base64 (padded or not, LF or CRLF) of the HostData JSON."""
    line = sys.stdin.buffer.readline().strip().rstrip(b"=")
    return json.loads(base64.b64decode(line + b"=" * (-len(line) % 4)))


def claims_issuer(token: str) -> str:
    """The ``iss`` of the invocation's JWT (the toy does not verify its signature)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"]


class EchoProvider:
    def __init__(self, host_data: dict[str, Any]) -> None:
        self.host_data = host_data
        self.test_mode = host_data.get("host_id") == TEST_MODE_HOST_ID
        self.issuers = set(host_data["cluster_issuers"])
        #: Link values by actor key (links are tracked per actor, spec §8.2).
        self.links = {ld["actor_id"]: ld["values"] for ld in host_data["link_definitions"]}
        self.done = asyncio.Event()

    def encode(self, obj: Any) -> bytes:
        return json.dumps(obj).encode() if self.test_mode else msgpack.packb(obj)

    def decode(self, data: bytes) -> Any:
        return json.loads(data) if self.test_mode else msgpack.unpackb(data)

    async def run(self) -> None:
        url = self.host_data.get("lattice_rpc_url") or "127.0.0.1:4222"
        self.nc = await nats.connect(url if "://" in url else f"nats://{url}")
        rpc = "wasmbus.rpc.{lattice_rpc_prefix}.{provider_key}.{link_name}".format(**self.host_data)
        await self.nc.subscribe(rpc, queue="rpc", cb=self.on_rpc)
        await self.nc.subscribe(f"{rpc}.linkdefs.put", cb=self.on_link_put)
        await self.nc.subscribe(f"{rpc}.linkdefs.del", cb=self.on_link_del)
        await self.nc.subscribe(f"{rpc}.shutdown", cb=self.on_shutdown)
        await self.nc.subscribe(f"{rpc}.health", cb=self.on_health)  # last: health means ready
        await self.done.wait()
        await self.nc.drain()

    async def on_rpc(self, msg: Any) -> None:
        inv = msgpack.unpackb(msg.data)
        try:
            result = self.dispatch(inv)
            response = {"msg": result, "invocation_id": inv["id"], "content_length": len(result)}
        except Exception as error:
            response = {
                "msg": b"",
                "invocation_id": inv.get("id", ""),
                "error": str(error),
                "content_length": 0,
            }
        if msg.reply:
            await self.nc.publish(msg.reply, msgpack.packb(response))

    def dispatch(self, inv: dict[str, Any]) -> bytes:
        actor = inv["origin"]["public_key"]
        if claims_issuer(inv["encoded_claims"]) not in self.issuers:
            raise PermissionError("Issuer of this invocation is not in list of cluster issuers")
        if actor not in self.links:
            raise PermissionError(f"unlinked actor: '{actor}'")
        argument = msgpack.unpackb(inv["msg"])
        if inv["operation"] == "Echo.Echo":
            return msgpack.packb(argument)
        if inv["operation"] == "Echo.Greet":
            greeting = self.links[actor].get("GREETING", "hello")
            return msgpack.packb(f"{greeting}, {argument}")
        raise ValueError(f"unknown operation: {inv['operation']}")

    async def on_link_put(self, msg: Any) -> None:
        link = self.decode(msg.data)
        self.links.setdefault(link["actor_id"], link["values"])  # duplicates are ignored

    async def on_link_del(self, msg: Any) -> None:
        self.links.pop(self.decode(msg.data)["actor_id"], None)

    async def on_health(self, msg: Any) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, self.encode({"healthy": True}))

    async def on_shutdown(self, msg: Any) -> None:
        try:
            host_id = json.loads(msg.data).get("host_id", "")
        except ValueError:
            host_id = ""
        if msg.reply and host_id in ("", self.host_data["host_id"]):
            await self.nc.publish(msg.reply, b"shutting down")
            await self.nc.flush()
            self.done.set()


if __name__ == "__main__":
    asyncio.run(EchoProvider(read_host_data()).run())
