"""nats-kvcache: a wasmcloud:keyvalue capability provider, replicated over NATS."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _package_version

try:
    #: The installed distribution's version: one source of truth, ``pyproject.toml``.
    __version__ = _package_version("nats-kvcache")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
