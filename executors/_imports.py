"""The single gate through which executors import torch, transformers and bitsandbytes.

These come from the optional ``exec`` extra. Every module of ``executors`` that needs one calls the
function here instead of importing it at module level, so ``import executors`` stays light and a
missing extra turns into one clear :class:`ExecExtraMissingError` (a FitplanError: the CLI prints it
as one line) instead of a ModuleNotFoundError traceback.

bitsandbytes 0.50 logs two harmless lines on CPU ("Failed to load CPU gemm_4bit_forward from
kernels-community" on import, "MatMul8bitLt: inputs will be cast ..." on each 8-bit forward); its
logger is set to ERROR before the import (measured in ENVIRONMENT.md). transformers' weight-loading
progress bar is switched off: executors report their own progress.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from types import ModuleType

from planner.errors import UnsupportedError

INSTALL_HINT = 'install the exec extra: from a fitplan checkout, pip install ".[exec]"'
EXEC_PACKAGES: tuple[str, ...] = ("torch", "transformers", "bitsandbytes")


class ExecExtraMissingError(UnsupportedError):
    """torch, transformers or bitsandbytes is not installed (the ``exec`` extra)."""


def _import(name: str, purpose: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ExecExtraMissingError(f"{purpose} needs {name}, which is not installed ({error}); {INSTALL_HINT}.") \
            from error


def import_torch(purpose: str = "running a model") -> ModuleType:
    return _import("torch", purpose)


def import_transformers(purpose: str = "loading a Hugging Face model") -> ModuleType:
    transformers = _import("transformers", purpose)
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def import_bitsandbytes(purpose: str = "bitsandbytes quantization") -> ModuleType:
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    return _import("bitsandbytes", purpose)


def import_all() -> None:
    """Import the whole extra (the 'startup' phase of a measured run)."""
    import_torch()
    import_transformers()
    import_bitsandbytes()


def package_versions() -> dict[str, str | None]:
    """Installed versions of the exec packages, read from metadata (imports nothing)."""
    versions: dict[str, str | None] = {}
    for name in EXEC_PACKAGES + ("accelerate", "tokenizers", "safetensors"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions
