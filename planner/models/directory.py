"""Local Hugging Face model directories: the one check every command that loads one runs first.

A directory ``save_pretrained`` wrote holds ``config.json`` and the weights (safetensors, or the older
``pytorch_model*.bin``, possibly sharded with an index). ``fitplan run``, ``profile``, ``search
--execute-top`` and ``lab`` (and their Python functions) refuse anything else before any work, with one line
saying which of the three is wrong.
"""

from __future__ import annotations

import os
from pathlib import Path

from planner.errors import InvalidRequestError

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.safetensors.index.json",
                   "pytorch_model.bin.index.json")
"""file names of a model's weights in a directory ``save_pretrained`` wrote"""


def check_model_dir(model_dir: str | os.PathLike, what: str = "model_dir") -> Path:
    """The model directory, resolved; one clear InvalidRequestError (``what`` names the argument or flag)
    when it is not a Hugging Face model directory with a config and weights."""
    path = Path(model_dir).expanduser()
    if not path.exists():
        raise InvalidRequestError(f"{what} {str(model_dir)!r} does not exist; pass a local Hugging Face model "
                                  f"directory (config.json + weights).")
    if not path.is_dir():
        raise InvalidRequestError(f"{what} {str(model_dir)!r} is a file; pass the model's directory (it holds "
                                  f"config.json and the weights).")
    if not (path / "config.json").is_file():
        raise InvalidRequestError(f"{what} {str(model_dir)!r} has no config.json; it is not a Hugging Face model "
                                  f"directory (save_pretrained writes config.json + weights).")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        raise InvalidRequestError(f"{what} {str(model_dir)!r} has a config.json but no weights (*.safetensors or "
                                  f"pytorch_model*.bin); save the model with save_pretrained first.")
    return path.resolve()
