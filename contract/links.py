"""Link definitions: which actor may call this provider, with what configuration (spec §8).

The host publishes them on ``linkdefs.put``/``linkdefs.del`` (msgpack, JSON in test mode) and
lists the existing ones in HostData. Only ``values`` is required: the OTP host adds keys of its
own (``id``, ``deleted``) that must be ignored, and older peers may omit the strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contract import _fields as f
from contract.codec import WireError, pack, pack_json, unpack, unpack_json

__all__ = ["LinkDefinition"]

_LINK_FIELDS = ("actor_id", "provider_id", "link_name", "contract_id", "values")


@dataclass(slots=True)
class LinkDefinition:
    """An actor↔provider link (spec §8). Only ``values`` is required on decode."""

    actor_id: str = ""
    provider_id: str = ""
    link_name: str = ""
    contract_id: str = ""
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_obj(cls, obj: Any) -> LinkDefinition:
        """From a decoded map/array; unknown keys (``id``, ``deleted``) are ignored."""
        try:
            m = f.struct_fields(obj, _LINK_FIELDS, "LinkDefinition")
            if "values" not in m:
                raise f.missing("values")
            return cls(
                f.as_str(m.get("actor_id", ""), "actor_id"),
                f.as_str(m.get("provider_id", ""), "provider_id"),
                f.as_str(m.get("link_name", ""), "link_name"),
                f.as_str(m.get("contract_id", ""), "contract_id"),
                f.as_str_map(m["values"], "values"),
            )
        except f.FieldError as exc:
            raise WireError(str(exc)) from None

    @classmethod
    def decode_msgpack(cls, data: bytes) -> LinkDefinition:
        return cls.from_obj(unpack(data))

    @classmethod
    def decode_json(cls, data: bytes | str) -> LinkDefinition:
        """Test-mode form (spec §14)."""
        return cls.from_obj(unpack_json(data))

    def to_dict(self) -> dict[str, Any]:
        """Rust struct order (actor_id, provider_id, link_name, contract_id, values)."""
        return {
            "actor_id": self.actor_id,
            "provider_id": self.provider_id,
            "link_name": self.link_name,
            "contract_id": self.contract_id,
            "values": dict(self.values),
        }

    def encode_msgpack(self) -> bytes:
        return pack(self.to_dict())

    def encode_json(self) -> bytes:
        return pack_json(self.to_dict())
