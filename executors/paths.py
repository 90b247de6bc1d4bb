"""Where executors keep files: the user cache (fixtures, baseline references) and model fingerprints.

The cache root is ``$FITPLAN_CACHE`` when set, else ``$XDG_CACHE_HOME/fitplan``, else
``~/.cache/fitplan``. Nothing in it is needed for correctness: deleting it only costs recomputation.
"""

from __future__ import annotations

import os
from pathlib import Path

from executors.evaluate.base import fingerprint
from planner.user_cache import cache_root

__all__ = ["cache_root", "model_fingerprint"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Changes when the directory's weights or config change (path, names, sizes and mtimes)."""
    root = Path(model_dir).resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir()
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return fingerprint([str(root), files])
