"""``wasmcloud:keyvalue`` on top of the generic kit: a FakeHost with typed KeyValue clients.

:class:`KeyValueHost` is a :class:`~wasmbus_testkit.fakehost.FakeHost` whose provider
implements ``wasmcloud:keyvalue``: ``host.kv`` is a ``KeyValueClient`` (``contract.client``) for
the actor linked at start, ``host.client_for(actor)`` one for any other actor. The client signs
with the same claims as :class:`~wasmbus_testkit.invoker.Invoker` and adds typed calls and the
object-store chunking of bodies over 900 KiB (spec §11). Links are probed with a read-only
``KeyValue.Contains``, so the probe is an ordinary call of the contract.
"""

from __future__ import annotations

from typing import Any

from contract.client import KeyValueClient, KeyValueError
from contract.codec import pack
from contract.keyvalue import CONTRACT_ID
from contract.nkeys import KeyPair
from wasmbus_testkit.fakehost import FakeHost, Launcher
from wasmbus_testkit.natsserver import NatsServer

__all__ = ["CONTRACT_ID", "KEYVALUE_LINK_PROBE", "KeyValueClient", "KeyValueError", "KeyValueHost"]

#: A read-only call whose answer tells a linked actor from an unlinked one.
KEYVALUE_LINK_PROBE = ("KeyValue.Contains", pack("__fakehost_probe__"))


class KeyValueHost(FakeHost):
    """A FakeHost for a ``wasmcloud:keyvalue`` provider; takes FakeHost's options."""

    def __init__(self, server: NatsServer, launch: Launcher, **options: Any) -> None:
        options.setdefault("contract_id", CONTRACT_ID)
        options.setdefault("link_probe", KEYVALUE_LINK_PROBE)
        super().__init__(server, launch, **options)
        self._kv: KeyValueClient | None = None

    @property
    def kv(self) -> KeyValueClient:
        """A client for the actor linked at start (``keys.actor``), signed by the issuer."""
        if self._kv is None:
            self._kv = self.client_for(self.keys.actor)
        return self._kv

    def client_for(
        self,
        actor: KeyPair | str,
        *,
        signer: KeyPair | None = None,
        contract_id: str | None = None,
        host_id: str | None = None,
        timeout: float | None = None,
    ) -> KeyValueClient:
        """A KeyValueClient calling as ``actor``, signing with ``signer`` (default: issuer)."""
        return KeyValueClient(
            self.nc,
            lattice_prefix=self.lattice,
            provider_key=self.keys.provider.public_key,
            link_name=self.link_name,
            signer=signer or self.issuer,
            actor_key=actor.public_key if isinstance(actor, KeyPair) else actor,
            contract_id=self.target_contract_id if contract_id is None else contract_id,
            host_id=host_id,
            timeout=self.rpc_timeout if timeout is None else timeout,
        )
