"""A persistent copy of the GPU-independent fit tables, so `fitplan fits` does not rebuild ~2,000 plans
on every run.

An entry is one ``.npz`` file under ``<user cache>/fit-tables/`` (``planner.cache.cache_root``:
``$FITPLAN_CACHE`` or ``~/.cache/fitplan``) holding the table's arrays and, as JSON, its rows and the
request it answers. Its name is a hash of the request and of the content of every source and data file
of the ``planner`` package (formulas, formats, engines, the model registry), so any change to the code,
the data or the fitplan version reaches a new entry; the request is stored too and checked on load.
A missing, unreadable, corrupt or mismatching entry is rebuilt and rewritten (atomically); an
unwritable cache directory is ignored. The cache is never needed for correctness, only for speed:
``FITPLAN_TABLE_CACHE=off`` disables it. The stored numbers are the computed ones bit for bit (float64
arrays; JSON floats round-trip exactly).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from planner.sizing.table import DECODE_INPUTS, FitTable

SWITCH_ENV = "FITPLAN_TABLE_CACHE"
LAYOUT = 1  # bump when the stored layout changes
MAX_ENTRIES = 64  # oldest entries beyond this are removed when a new one is written (~0.1 MB each)
_ARRAYS = ("upper", "point", "window", "max_tokens", "kv_per_token", "kv_window_per_token")
_SOURCE_SUFFIXES = (".py", ".toml", ".json", ".csv")


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    from planner.cache import cache_root

    return cache_root() / "fit-tables"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the content of every source and data file of the ``planner`` package (the version)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256(f"layout {LAYOUT}".encode())
    for path in sorted(root.rglob("*")):
        if path.suffix in _SOURCE_SUFFIXES and "__pycache__" not in path.parts and path.is_file():
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return digest.hexdigest()


def cached(request: tuple, build: Callable[[], tuple[FitTable, Any]]) -> tuple[FitTable, Any]:
    """``build()`` (a table and JSON-able extras), or the stored copy of a previous build of ``request``."""
    if not enabled():
        return build()
    text = json.dumps(request)
    try:
        path = cache_dir() / f"{hashlib.sha256((code_fingerprint() + text).encode()).hexdigest()[:32]}.npz"
    except (OSError, RuntimeError, KeyError):  # no home directory, unreadable package files: no cache
        return build()
    found = _load(path, text)
    if found is not None:
        return found
    table, extras = build()
    _store(path, text, table, extras)
    return table, extras


def _load(path: Path, request: str) -> tuple[FitTable, Any] | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            arrays = {name: stored[name] for name in _ARRAYS}
            decode = {name: stored[f"decode_{name}"] for name in DECODE_INPUTS}
    except FileNotFoundError:
        return None
    except Exception:  # corrupt or foreign file: rebuild (and overwrite it)
        return None
    if not isinstance(meta, dict) or meta.get("request") != request or not isinstance(meta.get("rows"), list):
        return None
    rows = meta["rows"]
    n = len(rows)
    if any(a.shape[:1] != (n,) for a in [*arrays.values(), *decode.values()]) or arrays["upper"].ndim != 3:
        return None
    table = FitTable(rows, arrays["upper"], arrays["point"], arrays["window"], arrays["max_tokens"], None,
                     arrays["kv_per_token"], arrays["kv_window_per_token"], None, decode)
    return table, meta.get("extras")


def _store(path: Path, request: str, table: FitTable, extras: Any) -> None:
    meta = json.dumps({"request": request, "rows": table.rows, "extras": extras})
    arrays = {name: getattr(table, name) for name in _ARRAYS}
    arrays.update({f"decode_{name}": values for name, values in table.decode.items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            np.savez_compressed(handle, meta=np.array(meta), **arrays)
        os.replace(handle.name, path)
        _prune(path.parent)
    except OSError:
        try:
            os.unlink(handle.name)
        except (OSError, NameError):
            pass


def _prune(folder: Path) -> None:
    """Keep the ``MAX_ENTRIES`` most recently written entries."""
    entries = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for old in entries[MAX_ENTRIES:]:
        old.unlink(missing_ok=True)
