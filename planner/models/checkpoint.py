"""The weight format a checkpoint ships in, read from its config's ``quantization_config``.

gpt-oss ships MXFP4 experts, DeepSeek-V3 block-scaled FP8, ``*-AWQ``/``*-GPTQ`` repos 4-bit integer
weights: estimating them in bf16 answers a question nobody asked. :func:`checkpoint_format` maps the
``quant_method`` keys that transformers writes (``quantizers/auto.py`` names: mxfp4, fp8, gptq, awq,
bitsandbytes) to fitplan's format names; :func:`default_precision` is that format, else bf16.
"""

from __future__ import annotations

from typing import Any

from planner.models.spec import ModelSpec

DEFAULT_PRECISION = "bf16"


def checkpoint_format(spec: ModelSpec) -> str | None:
    """fitplan's name of the format ``spec``'s checkpoint is stored in, or None when it is not quantized
    (or its quantization_config names a method fitplan does not model)."""
    return format_of_quantization_config(spec.quantization_config)


def format_of_quantization_config(qc: dict[str, Any] | None) -> str | None:
    """Map a config.json ``quantization_config`` to a format name (None when unknown or absent)."""
    if not isinstance(qc, dict):
        return None
    method = str(qc.get("quant_method", "")).lower()
    bits = qc.get("bits") or qc.get("w_bit")
    if method == "fitplan-implied":  # set by planner.models.resolve from a repo name such as "*-AWQ"
        return qc.get("format")
    if method == "mxfp4":
        return "mxfp4"
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8-block" if qc.get("weight_block_size") else "fp8"
    if method == "gptq":
        return "gptq-int8" if bits == 8 else "gptq-int4" if bits in (None, 4) else None
    if method == "awq":
        return "awq-int4" if bits in (None, 4) else None
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return "int8"
        if qc.get("load_in_4bit") or qc.get("_load_in_4bit"):
            kind = str(qc.get("bnb_4bit_quant_type", "fp4")).lower()
            double = bool(qc.get("bnb_4bit_use_double_quant"))
            return {"nf4": "nf4", "fp4": "fp4"}.get(kind, "fp4") + ("-dq" if double else "")
    return None


def default_precision(spec: ModelSpec) -> str:
    """The precision an estimate uses when the user names none: the checkpoint's own format, else bf16."""
    return checkpoint_format(spec) or DEFAULT_PRECISION


def default_precision_note(spec: ModelSpec) -> str | None:
    """One line saying the default precision came from the checkpoint (None when it is plain bf16)."""
    fmt = checkpoint_format(spec)
    if fmt is None:
        return None
    return f"precision {fmt}: the format {spec.name} ships in ({format_origin(spec)}); pass --precision to choose another"


def format_origin(spec: ModelSpec) -> str:
    """Where the checkpoint format was read: the config's quantization_config, or the repo name."""
    return (spec.quantization_config or {}).get("implied_by", "its config's quantization_config")
