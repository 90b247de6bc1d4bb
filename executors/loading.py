"""Load a Hugging Face model directory for a run, optionally quantized at load time.

- The kind comes from ``config.json``: an ``architectures`` entry ending in ``ForCausalLM`` /
  ``LMHeadModel`` is a causal LM (``AutoModelForCausalLM``), any other single-stack model an encoder
  (``AutoModel``: the raw hidden states, what sentence embeddings pool). Encoder-decoder models are
  not supported by the executors yet.
- A quantization-only strategy whose Linear layers all get one bitsandbytes format (int8, nf4, fp4,
  with or without double quant), or one plain dtype, is applied at load time through transformers'
  ``BitsAndBytesConfig`` / ``dtype`` (the way users load quantized models; the rule lives in
  :mod:`planner.execution` so the CPU memory estimate follows the same path). Everything else is
  loaded in float32 and handed to the compression steps, which quantize by module replacement.
- The model is put in ``eval()`` mode: bitsandbytes dequantizes in train mode and is 1.2-1.9x slower
  than fp32 there (ENVIRONMENT.md).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError, UnknownModelError, UnsupportedError
from planner.execution import load_time_format
from planner.strategy import QuantizationSpec

BNB_OPTIONS: dict[str, dict[str, Any]] = {
    "int8": {"load_in_8bit": True},
    "nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False},
    "nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    "fp4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True},
}
_TORCH_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def read_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise UnknownModelError(f"model directory {str(model_dir)!r} does not exist; pass a local Hugging Face "
                                f"model directory (config.json + weights).")
    config = path / "config.json"
    if not config.is_file():
        raise UnknownModelError(f"directory {str(model_dir)!r} has no config.json; it is not a Hugging Face model "
                                f"directory.")
    return json.loads(config.read_text())


def model_kind(model_dir: str | os.PathLike) -> str:
    """'causal-lm' or 'encoder', from config.json (no torch)."""
    config = read_config(model_dir)
    if config.get("is_encoder_decoder"):
        raise UnsupportedError(f"{model_dir} is an encoder-decoder model ({config.get('model_type')}); executors run "
                               f"causal LMs and encoders only.")
    architectures = config.get("architectures") or []
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures):
        return "causal-lm"
    if architectures:
        return "encoder"
    from planner import get_model

    return "causal-lm" if get_model(Path(model_dir)).architecture == "decoder" else "encoder"


def check_device(device: str) -> str:
    """The device name's spelling: 'auto', 'cpu', 'cuda' or 'cuda:N' (no torch import: checked before
    any work; whether a GPU is there is :func:`resolve_device`'s question)."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise InvalidRequestError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    return device


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    from executors._imports import import_torch

    check_device(device)
    torch = import_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedError(f"device {device!r} was requested but torch sees no CUDA GPU on this machine.")
    return device


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    kind: str
    model_dir: Path
    device: str
    dtype: str
    quantized_at_load: str | None


def load_tokenizer(model_dir: str | os.PathLike) -> Any:
    from executors._imports import import_transformers

    transformers = import_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; causal LMs often ship without
    return tokenizer


def load_model(model_dir: str | os.PathLike, *, quantization: QuantizationSpec | None = None,
               device: str = "cpu") -> LoadedModel:
    """Load ``model_dir`` on ``device`` in eval mode, quantized at load time when ``quantization`` is
    given (it must satisfy :func:`load_time_format`)."""
    from executors._imports import import_torch, import_transformers

    kind = model_kind(model_dir)
    fmt = load_time_format(quantization)
    if quantization is not None and fmt is None:
        raise UnsupportedError(f"quantization {quantization.summary()!r} cannot be applied at load time; apply it "
                               f"with the compression steps.")
    torch = import_torch()
    transformers = import_transformers()
    dtype_name = quantization.compute_dtype if quantization is not None else "fp32"
    kwargs: dict[str, Any] = {"dtype": getattr(torch, _TORCH_DTYPE[dtype_name])}
    if fmt in BNB_OPTIONS:
        from executors._imports import import_bitsandbytes

        import_bitsandbytes()
        options = dict(BNB_OPTIONS[fmt])
        if options.get("load_in_4bit"):
            options["bnb_4bit_compute_dtype"] = kwargs["dtype"]
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(**options)
        kwargs["device_map"] = {"": device}
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    model = auto.from_pretrained(str(model_dir), **kwargs)
    if fmt not in BNB_OPTIONS:
        model = model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=load_tokenizer(model_dir), kind=kind, model_dir=Path(model_dir),
                       device=device, dtype=dtype_name, quantized_at_load=fmt)
