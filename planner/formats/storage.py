"""Exact bytes of a parameter tensor stored in a format.

Non-GGUF formats use the formula at the top of ``formats.toml``:
``N*bits/8 + groups*bytes_per_group + nested + out*bytes_per_row + in*bytes_per_input + bytes_per_tensor``.
GGUF formats first pick the ggml type of each tensor with the format's rules (llama.cpp
``llama_tensor_get_type``), then store ``out * in/block`` blocks of that type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from planner.formats.registry import dtype_bytes, format_catalog
from planner.formats.schema import WeightFormat
from planner.models.spec import ModelSpec, ParamGroup


@dataclass(frozen=True)
class GroupStorage:
    """Storage of one ParamGroup (all ``group.count`` tensors) in a format."""

    group: ParamGroup
    quantized: bool
    bytes: float
    stored_as: str = ""


# torch's name of each compute dtype: HQQ stores it, one byte per character, in every layer's metadata.
TORCH_DTYPE_NAMES = {"fp32": "torch.float32", "fp16": "torch.float16", "bf16": "torch.bfloat16"}


def group_count(fmt: WeightFormat, out_features: int, in_features: int) -> int:
    """Quantization groups of one (out x in) weight under ``fmt``'s ``group_layout``."""
    n = out_features * in_features
    g = fmt.group_size
    if fmt.group_layout == "flat":
        return math.ceil(n / g)
    if fmt.group_layout == "input":
        return out_features * math.ceil(in_features / g)
    if fmt.group_layout == "tile":
        return math.ceil(out_features / g) * math.ceil(in_features / g)
    return 0


def packing_problem(fmt: WeightFormat, out_features: int, in_features: int) -> str | None:
    """Why ``fmt`` cannot store an (out x in) weight, or None when it can.

    Bit-packed formats (``values_per_word``, HQQ) split the flattened weight into groups of
    ``group_size`` values (the tensor must divide evenly) and pack ``values_per_word`` groups into one
    word per column; without ``pads_partial_word`` the group count must divide evenly too
    (hqq.core.bitpack.BitPack.pack_4bit_u8 / pack_2bit_u8 split the rows in halves / quarters).
    """
    if not fmt.values_per_word:
        return None
    n = out_features * in_features
    if n % fmt.group_size:
        return f"{out_features} x {in_features} = {n:,} values is not a multiple of the group size {fmt.group_size}"
    groups = n // fmt.group_size
    if not fmt.pads_partial_word and groups % fmt.values_per_word:
        return (f"its {groups:,} groups of {fmt.group_size} are not a multiple of {fmt.values_per_word} "
                f"(values per packed word)")
    return None


def linear_bytes(fmt: WeightFormat, out_features: int, in_features: int, compute_dtype: str | None = None) -> float:
    """Bytes of one quantized (out x in) weight matrix in a non-GGUF format (no bias).

    ``compute_dtype`` (default: the format's) is the dtype of the per-group values of formats that keep
    them in the compute dtype (``group_meta_values``, HQQ's scale and zero point).
    """
    n = out_features * in_features
    groups = group_count(fmt, out_features, in_features)
    if fmt.values_per_word:
        values = math.ceil(groups / fmt.values_per_word) * fmt.group_size * fmt.word_bytes
    else:
        values = n * fmt.bits / 8
    meta_dtype = compute_dtype or fmt.compute_dtype
    per_group = fmt.bytes_per_group + fmt.group_meta_values * dtype_bytes(meta_dtype)
    per_tensor = fmt.bytes_per_tensor + (len(TORCH_DTYPE_NAMES[meta_dtype]) if fmt.stores_dtype_name else 0)
    nested = math.ceil(groups / fmt.nested_group_size) * fmt.nested_bytes_per_group if fmt.nested_group_size else 0.0
    return (values + groups * per_group + nested + out_features * fmt.bytes_per_row
            + in_features * fmt.bytes_per_input + per_tensor)


def gguf_bytes(type_name: str, rows: int, row_length: int) -> tuple[float, str]:
    """Bytes of a (rows x row_length) tensor in ggml type ``type_name`` and the type really used.

    llama.cpp falls back to another type when ``row_length`` is not a multiple of the block.
    """
    types = format_catalog().gguf_types
    name = type_name
    while row_length % types[name].block:
        name = types[name].fallback or "F16"
    gtype = types[name]
    return rows * (row_length // gtype.block) * gtype.bytes, name


def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp use_more_bits(i_layer, n_layers): the first and last eighth plus every third layer."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _condition(when: str, spec: ModelSpec, layer: int | None, n_layers: int) -> bool:
    falcon = spec.model_type == "falcon"
    i = layer if layer is not None else 0
    checks = {
        "always": lambda: True,
        "use_more_bits": lambda: layer is not None and _use_more_bits(i, n_layers),
        "first_two_layers": lambda: layer is not None and i < 2,
        "first_sixteenth": lambda: layer is not None and i < n_layers // 16,
        # llama.cpp assigns LLM_TYPE_70B to 80-layer llama models.
        "n_layers_80": lambda: spec.model_type == "llama" and spec.num_layers == 80,
        "n_experts_8": lambda: spec.moe is not None and spec.moe.num_experts == 8,
        "gqa_ge_4": lambda: spec.num_heads // spec.num_kv_heads >= 4,
        "model_type_falcon": lambda: falcon,
        "not_falcon": lambda: not falcon,
        "not_falcon_or_more_bits": lambda: not falcon or (layer is not None and _use_more_bits(i, n_layers)),
    }
    return checks[when]()


def gguf_type_for(fmt: WeightFormat, spec: ModelSpec, group: ParamGroup, layer: int | None) -> str:
    """The ggml type llama.cpp gives one tensor of ``group`` (in layer ``layer``) under ``fmt``.

    A tied model has no output.weight, so llama.cpp gives token_embd the output tensor's type.
    """
    if group.kind in ("norm", "parameter") or group.role == "router":
        return "F32"
    role = group.role
    if group.name == "embed_tokens" and spec.tie_word_embeddings:
        role = "lm_head"
    n_layers = len(group.layers) or spec.num_layers
    for rule in fmt.gguf_rules:
        if role in rule.roles and _condition(rule.when, spec, layer, n_layers):
            return rule.type
    return fmt.gguf_base_type or "F16"


def _gguf_group(fmt: WeightFormat, spec: ModelSpec, group: ParamGroup) -> GroupStorage:
    if group.kind == "linear":
        rows, length = group.out_features or 0, group.in_features or 0
    elif group.kind == "embedding" and group.count == 1:
        rows, length = group.params_each // spec.hidden_size, spec.hidden_size
    else:
        rows, length = 1, group.params_each
    layers = group.layers or (None,)
    per_layer = group.count // max(1, len(group.layers)) if group.layers else group.count
    total = 0.0
    used: dict[str, int] = {}
    bias = (group.out_features or 0) if group.bias and group.kind == "linear" else 0
    weight_params = group.params_each - bias
    for layer in layers:
        wanted = gguf_type_for(fmt, spec, group, layer)
        size, actual = gguf_bytes(wanted, rows, length) if rows * length == weight_params else \
            gguf_bytes("F32", 1, weight_params)
        total += size * per_layer
        used[actual] = used.get(actual, 0) + per_layer
        if group.bias and group.out_features:
            total += group.out_features * 4 * per_layer
    quantized = any(t not in ("F32", "F16", "BF16") for t in used)
    return GroupStorage(group, quantized, total, "+".join(f"{n}x{t}" for t, n in used.items()))


def _excluded_by_checkpoint(spec: ModelSpec, fmt: WeightFormat, group: ParamGroup) -> bool:
    """The checkpoint's own quantization_config.modules_to_not_convert, when it is in this format."""
    qc = spec.quantization_config or {}
    if not qc or qc.get("quant_method") not in fmt.checkpoint_quant_methods:
        return False
    patterns = [p.removeprefix("model.") for p in qc.get("modules_to_not_convert") or ()]
    name = group.name
    for pattern in patterns:
        if pattern == name or name.startswith(pattern + ".") or _glob_prefix(pattern, name):
            return True
    return False


def _glob_prefix(pattern: str, name: str) -> bool:
    parts, names = pattern.split("."), name.split(".")
    if len(parts) > len(names):
        return False
    return all(p == "*" or p == n for p, n in zip(parts, names))


def group_storage(spec: ModelSpec, fmt: WeightFormat, group: ParamGroup, *,
                  quantize_lm_head: bool = False, compute_dtype: str | None = None) -> GroupStorage:
    """Bytes of ``group`` when ``spec`` is stored in ``fmt``.

    ``compute_dtype``: the run's compute dtype, for formats whose per-group values follow it (HQQ).
    ``quantize_lm_head`` overrides the format's default of keeping lm_head in 16-bit (Lightning's
    BitsandbytesPrecision converts every ``nn.Linear``, lm_head included).
    """
    if fmt.family == "gguf":
        return _gguf_group(fmt, spec, group)
    if fmt.family == "float":
        return GroupStorage(group, False, group.params * fmt.bits / 8, fmt.name)
    keep, dtype, element = _kept_parts(fmt.name, quantize_lm_head)
    stays_16bit = (group.kind != "linear" and "non_linear" in keep) or group.component in keep \
        or (spec.quantization_config is not None and _excluded_by_checkpoint(spec, fmt, group))
    if group.kind != "linear" or stays_16bit:
        return GroupStorage(group, False, group.params * element, dtype)
    per_tensor = linear_bytes(fmt, group.out_features or 0, group.in_features or 0, compute_dtype)
    bias = (group.out_features or 0) * element if group.bias else 0.0
    return GroupStorage(group, True, group.count * (per_tensor + bias), fmt.name)


@cache
def _kept_parts(format_name: str, quantize_lm_head: bool) -> tuple[frozenset[str], str, float]:
    """(parts kept in 16-bit, their dtype, its bytes) of a format."""
    from planner.formats.registry import get_format

    fmt = get_format(format_name)
    keep = set(fmt.keep_unquantized) - ({"lm_head"} if quantize_lm_head else set())
    dtype = fmt.unquantized_dtype_resolved
    return frozenset(keep), dtype, dtype_bytes(dtype)
