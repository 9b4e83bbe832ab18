"""The dev lattice state file: how ``call`` finds what ``dev`` started.

``dev`` writes one small JSON document (URL, keys, pids) and ``call`` reads it for every setting
not given as a flag, so trying the provider needs no copy-pasting of keys. Each entry of
``instances`` carries that instance's own address (``nats_url``, its leaf server, which
``call --instance N`` connects to), its ``instance_id`` and its ``state`` (running, starting,
stopping, down); ``dev`` rewrites the file whenever one of them changes. ``control`` is the Unix
socket ``nats-kvcache instance`` talks to. The file holds the
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
    control: str = ""  # the running ``dev``'s control socket

    def instance(self, index: int) -> dict[str, Any]:
        """Instance ``index``'s entry; a :class:`StateError` that lists the valid ones."""
        for entry in self.instances:
            if isinstance(entry, dict) and entry.get("index") == index:
                return entry
        known = [e.get("index") for e in self.instances if isinstance(e, dict)]
        have = ", ".join(str(k) for k in known) if known else "none"
        raise StateError(f"no instance {index} in the dev lattice (instances: {have})")

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


@dataclass(frozen=True, slots=True)
class Location:
    """Where the state file is (or would be) and how it was chosen.

    ``explicit`` (``--state`` or ``$NATS_KVCACHE_STATE``) means a missing file is an error;
    ``searched`` lists the directories looked in when nothing was found upward from the CWD."""

    path: Path
    explicit: bool
    source: str
    searched: tuple[Path, ...] = ()

    def not_found(self) -> str:
        """Where we looked, in one line, for "missing settings" messages."""
        if self.explicit:
            return f"no state file at {self.path} ({self.source})"
        if not self.searched:
            return f"no state file at {self.path}"
        top = self.searched[-1]
        where = (
            f"{self.searched[0]}"
            if len(self.searched) == 1
            else f"{self.searched[0]} or any parent up to {top}"
        )
        return f"no {DEFAULT_STATE_PATH} in {where}, ${STATE_ENV} unset"


def locate(flag: str | None, start: Path | None = None) -> Location:
    """For readers (``call``, ``status``, ``health``): ``--state``, else ``$NATS_KVCACHE_STATE``,
    else the nearest ``.dev-lattice/state.json`` in the CWD or a parent directory (as git finds
    ``.git``), else the CWD default (which does not exist)."""
    if flag:
        return Location(Path(flag), True, "--state")
    env = os.environ.get(STATE_ENV)
    if env:
        return Location(Path(env), True, f"${STATE_ENV}")
    here = (start or Path.cwd()).absolute()
    searched = []
    for directory in (here, *here.parents):
        searched.append(directory)
        candidate = directory / DEFAULT_STATE_PATH
        if candidate.is_file():
            shown = DEFAULT_STATE_PATH if directory == here else candidate
            return Location(shown, False, "found")
    return Location(DEFAULT_STATE_PATH, False, "default", tuple(searched))


def resolve_path(flag: str | None) -> tuple[Path, bool]:
    """For the writer (``dev``): ``--state``, else ``$NATS_KVCACHE_STATE``, else the CWD default.

    ``dev`` never writes into a parent directory: a lattice belongs to where it was started."""
    if flag:
        return Path(flag), True
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env), True
    return DEFAULT_STATE_PATH, False


def read(location: Location) -> DevState:
    """:func:`load` for a :class:`Location`; a missing explicit file says where it looked."""
    if location.explicit and not location.path.exists():
        raise StateError(location.not_found())
    return load(location.path, required=location.explicit)


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
