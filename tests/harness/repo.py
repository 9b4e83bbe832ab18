"""Where this repository is, and how its tests start the provider.

The test kit (``wasmbus_testkit``) knows no project; these are the two facts about this one
that its fixtures and the tests need.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["PROVIDER_COMMAND", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The provider as a host would run it from this checkout (no arguments).
PROVIDER_COMMAND = (sys.executable, "-m", "provider")
