"""The dev lattice state file: how ``call`` finds what ``dev`` started.

``dev`` writes one small JSON document (URL, keys, pids) and ``call`` reads it for every setting
not given as a flag, so trying the provider needs no copy-pasting of keys. The file holds the
throwaway cluster seed of the dev lattice, hence mode 0600 and an atomic replace: a reader never
sees a half-written file and no other user can read the seed.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

STATE_ENV = "NATS_KVCACHE_STATE"
DEFAULT_STATE_PATH = Path(".dev-lattice") / "state.json"


class StateError(Exception):
    """The state file exists but cannot be used (or an explicitly named one is missing)."""


@dataclass(slots=True)
class DevState:
    """Everything a client needs to reach the dev lattice's provider, plus the pids to clean up."""

    nats_url: str = ""
    lattice: str = ""
    provider_key: str = ""
    link_name: str = ""
    actor: str = ""
    seed: str = field(default="", repr=False)  # secret, even if a throwaway one
    instances: list[dict[str, Any]] = field(default_factory=list)
    nats_server: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any) -> DevState:
        """Tolerant of unknown keys, strict about types (a wrong type is a corrupt file)."""
        if not isinstance(obj, dict):
            raise StateError("state file must contain a JSON object")
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in obj.items():
            spec = known.get(name)
            if spec is None:
                continue
            expected = list if name == "instances" else dict if name == "nats_server" else str
            if not isinstance(value, expected):
                raise StateError(f"state file: {name!r} must be a {expected.__name__}")
            values[name] = value
        return cls(**values)


def resolve_path(flag: str | None) -> tuple[Path, bool]:
    """``(path, explicit)``: ``--state``, else ``$NATS_KVCACHE_STATE``, else the CWD default."""
    if flag:
        return Path(flag), True
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env), True
    return DEFAULT_STATE_PATH, False


def load(path: Path, *, required: bool) -> DevState:
    """Read the state file; a missing default file is simply "no defaults"."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise StateError(f"state file {path} not found") from None
        return DevState()
    except OSError as error:
        raise StateError(f"cannot read state file {path}: {error.strerror}") from None
    try:
        return DevState.from_dict(json.loads(text))
    except ValueError as error:
        raise StateError(f"state file {path} is not valid JSON: {error}") from None


def save(path: Path, state: DevState) -> None:
    """Write atomically with mode 0600 (the file carries a seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # O_CREAT's mode does not apply to an existing file
        json.dump(asdict(state), out, indent=2)
        out.write("\n")
    os.replace(tmp, path)


def remove(path: Path) -> None:
    """Delete the file so a stopped lattice's seed and pids do not linger."""
    path.unlink(missing_ok=True)
