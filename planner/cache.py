"""Where fitplan keeps files it can recompute: ``$FITPLAN_CACHE`` when set, else
``$XDG_CACHE_HOME/fitplan``, else ``~/.cache/fitplan``. Deleting it only costs recomputation
(fixtures, baseline references, this machine's memory profile)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    if os.environ.get("FITPLAN_CACHE"):
        return Path(os.environ["FITPLAN_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fitplan"
