"""The one cache root: $EDGESMITH_CACHE, or ~/.cache/edgesmith when it is unset or empty.

Under it: runtime/ (device runtimes from the registry's wheels), runner/ (runner builds),
tokenizers/, reference/ (profile --check's host bundles), farm/ (bundles, locks), devices/ (the
local device's workdir), emulated/ (the emulated devices' state, unless $EDGESMITH_STATE)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("EDGESMITH_CACHE") or Path.home() / ".cache" / "edgesmith")
