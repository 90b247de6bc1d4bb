"""Load a Hugging Face model directory for a run, optionally quantized at load time.

- The kind comes from ``config.json``: an ``architectures`` entry ending in ``ForCausalLM`` /
  ``LMHeadModel`` is a causal LM (``AutoModelForCausalLM``), any other single-stack model an encoder
  (``AutoModel``: the raw hidden states, what sentence embeddings pool). Encoder-decoder models are
  not supported by the executors yet.
- A quantization-only strategy whose Linear layers all get one bitsandbytes format (int8, nf4, fp4,
  with or without double quant), or one plain dtype, is applied at load time through transformers'
  ``BitsAndBytesConfig`` / ``dtype`` (the way users load quantized models). Everything else is loaded
  in float32 and handed to the compression steps, which quantize by module replacement.
- The model is put in ``eval()`` mode: bitsandbytes dequantizes in train mode and is 1.2-1.9x slower
  than fp32 there (ENVIRONMENT.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError, UnknownModelError, UnsupportedError
from planner.strategy import CompressionStrategy, QuantizationSpec

BNB_FORMATS: dict[str, dict[str, Any]] = {
    "int8": {"load_in_8bit": True},
    "nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False},
    "nf4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True},
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": False},
    "fp4-dq": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4", "bnb_4bit_use_double_quant": True},
}
DTYPE_FORMATS = ("fp32", "bf16", "fp16")
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


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    from executors._imports import import_torch

    torch = import_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidRequestError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedError(f"device {device!r} was requested but torch sees no CUDA GPU on this machine.")
    return device


def load_time_format(spec: QuantizationSpec | None) -> str | None:
    """The single format a quantization spec can be applied with at load time, or None.

    Eligible: every Linear group has the same format (no attention/mlp override, no kept first/last
    blocks), embeddings and lm_head unquantized, and the format is a bitsandbytes one or a plain dtype
    equal to the compute dtype.
    """
    if spec is None:
        return None
    uniform = (spec.format_for("attention") == spec.weights == spec.format_for("mlp")
               and spec.embeddings is None and spec.lm_head is None
               and spec.keep_first_layers == 0 and spec.keep_last_layers == 0)
    if not uniform:
        return None
    if spec.weights in BNB_FORMATS or (spec.weights in DTYPE_FORMATS and spec.weights == spec.compute_dtype):
        return spec.weights
    return None


def split_load_time_quantization(strategy: CompressionStrategy) -> tuple[QuantizationSpec | None,
                                                                         CompressionStrategy]:
    """(the part applied while loading, what the compression steps still have to apply).

    Only a quantization-only strategy is applied at load time: after distillation, pruning or low-rank
    the model has changed and is quantized by module replacement instead.
    """
    spec = strategy.quantization
    others = strategy.distillation or strategy.sparsity or strategy.low_rank
    if others is None and load_time_format(spec) is not None:
        return spec, strategy.model_copy(update={"quantization": None})
    return None, strategy


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
    if fmt in BNB_FORMATS:
        from executors._imports import import_bitsandbytes

        import_bitsandbytes()
        options = dict(BNB_FORMATS[fmt])
        if options.get("load_in_4bit"):
            options["bnb_4bit_compute_dtype"] = kwargs["dtype"]
        kwargs["quantization_config"] = transformers.BitsAndBytesConfig(**options)
        kwargs["device_map"] = {"": device}
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    model = auto.from_pretrained(str(model_dir), **kwargs)
    if fmt not in BNB_FORMATS:
        model = model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=load_tokenizer(model_dir), kind=kind, model_dir=Path(model_dir),
                       device=device, dtype=dtype_name, quantized_at_load=fmt)
