"""The uncompressed model's reference outputs, computed once per (model, evaluator) and cached.

Two levels: a dict in this process, and a file on disk,
``<cache>/references/<model fingerprint>/<evaluator key>.pt`` (see :mod:`executors.paths`). The
fingerprint changes when the model directory's weights change, so a stale reference is never used.
Files are written atomically (temp file + rename); a corrupt file (truncated, overwritten, CRC
mismatch: checked without torch by :func:`has_reference`, or failing to load) is deleted and
recomputed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from executors.evaluate.base import Evaluator, Reference
from executors.paths import cache_root, model_fingerprint

_MEMORY: dict[tuple[str, str], Reference] = {}


def reference_path(model_dir: str | os.PathLike, evaluator: Evaluator) -> Path:
    return cache_root() / "references" / model_fingerprint(model_dir) / f"{evaluator.key()}.pt"


def cached_reference(model_dir: str | os.PathLike, evaluator: Evaluator) -> Reference | None:
    """The cached reference (memory, then disk), or None."""
    path = reference_path(model_dir, evaluator)
    key = (str(path.parent), evaluator.key())
    if key in _MEMORY:
        return _MEMORY[key]
    if not path.is_file():
        return None
    from executors._imports import import_torch

    torch = import_torch()
    try:
        payload = torch.load(path, weights_only=True)
        reference = Reference(value=float(payload["value"]), tensors=dict(payload["tensors"]),
                              facts=dict(payload.get("facts", {})))
    except Exception:  # any unreadable payload (truncated zip, unpickling error, wrong keys): recompute
        path.unlink(missing_ok=True)
        return None
    _MEMORY[key] = reference
    return reference


def store_reference(model_dir: str | os.PathLike, evaluator: Evaluator, reference: Reference) -> Path:
    from executors._imports import import_torch

    torch = import_torch()
    path = reference_path(model_dir, evaluator)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"value": reference.value, "tensors": reference.tensors, "facts": reference.facts,
                "evaluator": evaluator.spec(), "model_dir": str(Path(model_dir).resolve())}, temporary)
    os.replace(temporary, path)
    _MEMORY[(str(path.parent), evaluator.key())] = reference
    return path


def reference_for(model_dir: str | os.PathLike, evaluator: Evaluator,
                  compute: Callable[[], Reference]) -> tuple[Reference, bool]:
    """The cached reference, or ``compute()`` stored for next time. Returns (reference, was_cached)."""
    reference = cached_reference(model_dir, evaluator)
    if reference is not None:
        return reference, True
    reference = compute()
    store_reference(model_dir, evaluator, reference)
    return reference, False


def has_reference(model_dir: str | os.PathLike, evaluator: Evaluator) -> bool:
    """Whether an intact reference exists (without loading it, and without importing torch). A file
    that is not an intact archive (torch.save writes a zip whose members carry CRCs) is deleted."""
    path = reference_path(model_dir, evaluator)
    if (str(path.parent), evaluator.key()) in _MEMORY:
        return True
    if not path.is_file():
        return False
    if _intact(path):
        return True
    path.unlink(missing_ok=True)
    return False


def _intact(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def clear_memory_cache() -> None:
    _MEMORY.clear()
