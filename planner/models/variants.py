"""Read what users paste from the hub: variant and packaging suffixes around a registry architecture.

``Qwen/Qwen2.5-7B-Instruct-AWQ``, ``TheBloke/Llama-2-7B-Chat-GGUF`` and
``meta-llama/Meta-Llama-3-8B-Instruct`` are the registry's Qwen2.5-7B, Llama-2-7b and Meta-Llama-3-8B
with a post-training suffix (same shapes: instruct, chat and base variants of one release share every
tensor shape) and a packaging suffix that names the weight format. :func:`parse_variant` splits a hub
id into the *core* of the name (org dropped, those suffixes dropped, lower case) and the weight format
the name implies, so that :mod:`planner.models.registry` can match cores instead of exact spellings.

Only words that never change a tensor shape are dropped: post-training tags (Instruct, Chat, it, hf,
Base, SFT, DPO) and packaging tags (GGUF, AWQ, GPTQ, FP8, bnb-4bit, MLX, ...). Context variants (4k/128k),
sizes and versions are kept, so Phi-3-mini-4k and Phi-3-mini-128k stay different models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Post-training tags: the same architecture with other weights.
_VARIANT_WORDS = {"instruct", "chat", "it", "hf", "base", "sft", "dpo", "rlhf", "pt"}
# Packaging tags that say nothing about the format (or a format fitplan does not model).
_PACKAGING_WORDS = {"gguf", "mlx", "exl2", "unsloth", "dynamic", "quantized", "quant", "i1", "imatrix", "bnb",
                    "4bit", "8bit", "awq", "gptq", "fp8", "int4", "int8", "w4a16", "w8a8", "w8a16", "mxfp4",
                    "nvfp4", "marlin", "hqq", "onnx", "ov", "openvino"}
_GGUF_TYPES = {"f16": "gguf-f16", "q8_0": "gguf-q8_0", "q6_k": "gguf-q6_k", "q5_k_m": "gguf-q5_k_m",
               "q4_k_m": "gguf-q4_k_m", "q4_0": "gguf-q4_0", "q3_k_m": "gguf-q3_k_m", "q2_k": "gguf-q2_k",
               "iq4_xs": "gguf-iq4_xs"}
# The common GGUF download when a repo name does not say which quantization: llama.cpp's recommended
# default (the README's "Q4_K_M ... recommended" row), stated in the note.
GGUF_DEFAULT = "gguf-q4_k_m"
_SPLIT = re.compile(r"[-\s]+")


@dataclass(frozen=True)
class Variant:
    """A parsed hub id: ``core`` (what registry names are matched on), the dropped words, the format."""

    core: str
    dropped: tuple[str, ...]
    implied_format: str | None
    format_reason: str | None


def parse_variant(name: str) -> Variant:
    """Split ``name`` (a hub id or a short name) into its core and the weight format its suffixes imply.

    >>> v = parse_variant("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8")
    >>> v.core, v.implied_format
    ('qwen2.5-7b', 'gptq-int8')
    """
    short = name.strip().rsplit("/", 1)[-1]
    words = [w for w in _SPLIT.split(short) if w]
    lowered = [w.lower() for w in words]
    kept, dropped = [], []
    for index, word in enumerate(lowered):
        if word in _VARIANT_WORDS or word in _PACKAGING_WORDS or word in _GGUF_TYPES:
            dropped.append(words[index])
        elif word == "meta" and index + 1 < len(lowered) and lowered[index + 1].startswith("llama"):
            dropped.append(words[index])  # meta-llama/Meta-Llama-3-8B: the org prefix repeated in the name
        else:
            kept.append(word)
    fmt, reason = _implied_format([w.lower() for w in dropped])
    return Variant(core="-".join(kept), dropped=tuple(dropped), implied_format=fmt, format_reason=reason)


def _implied_format(words: list[str]) -> tuple[str | None, str | None]:
    present = set(words)
    if "awq" in present:
        return "awq-int4", "the repo name says AWQ (4-bit)"
    if "gptq" in present:
        if present & {"int8", "8bit", "w8a16"}:
            return "gptq-int8", "the repo name says GPTQ 8-bit"
        return "gptq-int4", "the repo name says GPTQ (4-bit unless it says Int8)"
    gguf_types = [w for w in words if w in _GGUF_TYPES]
    if gguf_types:
        return _GGUF_TYPES[gguf_types[0]], f"the repo name says GGUF {gguf_types[0].upper()}"
    if "gguf" in present and present & {"mxfp4", "nvfp4", "fp8", "awq", "gptq"}:
        return None, None  # a GGUF of a type fitplan has no GGUF format for (gpt-oss MXFP4 GGUF): no guess
    if "gguf" in present:
        return GGUF_DEFAULT, ("the repo name says GGUF without a quantization type: assumed Q4_K_M, the "
                              "usual download (pass --precision for another file)")
    if "mxfp4" in present:
        return "mxfp4", "the repo name says MXFP4"
    if "nvfp4" in present:
        return "nvfp4", "the repo name says NVFP4"
    if "fp8" in present:
        return "fp8", "the repo name says FP8 (per-tensor scales assumed)"
    if "bnb" in present or "4bit" in present:
        if "8bit" in present:
            return "int8", "the repo name says bitsandbytes 8-bit"
        return "nf4", "the repo name says bitsandbytes 4-bit (NF4)"
    if "8bit" in present:
        return "int8", "the repo name says 8-bit (bitsandbytes LLM.int8 assumed)"
    return None, None


def core_of(label: str) -> str:
    """The core of a registry name or alias (the same reduction as :func:`parse_variant`)."""
    return parse_variant(label).core
