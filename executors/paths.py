"""Where executors keep files: the user cache (fixtures, baseline references), model fingerprints, and
the directories of executed runs (one of their own each, see :func:`new_run_dir`).

The cache root (:func:`planner.cache.cache_root`) is ``$FITPLAN_CACHE`` when set, else
``$XDG_CACHE_HOME/fitplan``, else ``~/.cache/fitplan``. Nothing in it is needed for correctness:
deleting it only costs recomputation.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path

from executors.evaluate.base import fingerprint
from planner.cache import cache_root

__all__ = ["cache_root", "model_fingerprint", "new_run_dir", "writable_directory"]

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """Changes when the directory's weights or config change (path, names, sizes and mtimes)."""
    root = Path(model_dir).resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir()
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return fingerprint([str(root), files])


def writable_directory(path: str | os.PathLike, label: str = "out_dir") -> Path:
    """``path`` as a directory this process can write in, created if missing; else one clear
    InvalidRequestError naming ``label`` (the flag or argument the user gave). Checked before any work
    so a run never finishes with nowhere to put its result."""
    from planner.errors import InvalidRequestError

    root = Path(path).expanduser()
    if root.exists() and not root.is_dir():
        raise InvalidRequestError(f"{label} {str(path)!r} is a file, not a directory; pass a directory for the "
                                  f"results (it is created when missing).")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=root, prefix=".fitplan-write-test-")
        probe.close()
    except (FileExistsError, NotADirectoryError):
        raise InvalidRequestError(f"{label} {str(path)!r} cannot be created: part of its path is a file.") from None
    except OSError as error:
        raise InvalidRequestError(f"{label} {str(path)!r} is not a writable directory "
                                  f"({error.strerror or error}); pass a directory you can write to.") from None
    return root


def new_run_dir(parent: Path, name: str) -> tuple[str, Path]:
    """A fresh directory ``parent/name/<run id>`` that no other run (this process or another) has: the
    id is the UTC start time plus a random suffix, and the directory is created exclusively (``mkdir``
    fails if it exists; a new id is drawn). Returns (run id, directory)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (parent / name).mkdir(parents=True, exist_ok=True)
    while True:
        run_id = f"{stamp}-{secrets.token_hex(3)}"
        directory = parent / name / run_id
        try:
            directory.mkdir()
        except FileExistsError:
            continue
        return run_id, directory
