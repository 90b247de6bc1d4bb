"""How the executors apply a strategy, as pure facts the planner can reason about without torch.

Also what they can apply at all (``EXECUTOR_FORMATS`` and the formats they refuse, with why).

Shared by ``executors.loading`` (which does it) and ``planner.memory.cpu`` (which predicts its
memory), so the prediction and the measurement always describe the same run:

- a quantization-only strategy whose Linear layers all get one bitsandbytes format, or one plain
  dtype equal to the compute dtype, is applied while loading (transformers ``BitsAndBytesConfig`` /
  ``dtype``); everything else is loaded in float32 and changed by the compression steps;
- the rest of the model (embeddings, norms, lm_head) is held in the compute dtype.
"""

from __future__ import annotations

from planner.strategy import HQQ_FORMATS, CompressionStrategy, QuantizationSpec

BNB_FORMATS: tuple[str, ...] = ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
DTYPE_FORMATS: tuple[str, ...] = ("fp32", "bf16", "fp16")

# What the executors can apply (``executors.steps.quantize`` imports these lists; search and the ``local``
# deployment target read them without torch): casts, bitsandbytes, torch dynamic int8, HQQ.
EXECUTOR_FORMATS: tuple[str, ...] = (*DTYPE_FORMATS, *BNB_FORMATS, "dynamic-int8", *HQQ_FORMATS)
# torch dynamic quantization: fp32 activations only, CPU kernels only.
FP32_COMPUTE_ONLY: tuple[str, ...] = ("dynamic-int8",)
CPU_ONLY_FORMATS: tuple[str, ...] = ("dynamic-int8",)
UNSUPPORTED_FORMATS: dict[str, str] = {
    "fp8": "fitplan's executors have no fp8 weight module yet (bitsandbytes has no fp8 layer; torch 2.13 has a "
           "CPU float8 matmul, torch._scaled_mm, that nothing here uses)",
    "gptq-int4": "GPTQ needs the gptqmodel package (not installed, not in fitplan's exec extra) and its "
                 "calibration-based packing",
    "gptq-int8": "GPTQ needs the gptqmodel package (not installed, not in fitplan's exec extra) and its "
                 "calibration-based packing",
    "awq-int4": "AWQ needs the autoawq package (not installed, not in fitplan's exec extra) and its "
                "calibration-based packing",
}
# The executors never quantize the KV cache: no step applies QuantizationSpec.kv_cache.
QUANTIZES_KV_CACHE = False
KV_CACHE_REASON = ("the executors do not quantize the KV cache: their evaluators score whole forward passes, which "
                   "use no cache, so a run could not measure its effect")


def executor_formats(device: str = "cpu") -> tuple[str, ...]:
    """Weight formats the executors apply on ``device`` ('cpu' or 'cuda')."""
    if device == "cpu":
        return EXECUTOR_FORMATS
    return tuple(f for f in EXECUTOR_FORMATS if f not in CPU_ONLY_FORMATS)


def unexecutable_reason(strategy: CompressionStrategy, device: str = "cpu") -> str | None:
    """Why the executors cannot run ``strategy`` on ``device`` ('cpu' or 'cuda'), one phrase; None when
    nothing in it is out of their reach (whether the model can take it is ``executors.preflight``'s check)."""
    q = strategy.quantization
    if q is None:
        return None
    if q.kv_cache is not None:
        return f"kv_cache {q.kv_cache!r}: {KV_CACHE_REASON}"
    used = {q.weights, q.attention, q.mlp, *(o.format for o in q.block_formats)}
    if q.keep_first_layers or q.keep_last_layers:
        used.add(q.keep_format)
    runnable = executor_formats(device)
    for fmt in sorted(f for f in used if f):
        if fmt in UNSUPPORTED_FORMATS:
            return f"{fmt}: {UNSUPPORTED_FORMATS[fmt]}"
        if fmt not in runnable:
            return f"the executors do not apply {fmt} on {device}"
    return None


def load_time_format(spec: QuantizationSpec | None) -> str | None:
    """The single format a quantization spec can be applied with at load time, or None.

    Eligible: every Linear group has the same format (no attention/mlp override, no kept first/last
    blocks, no per-block format other than ``weights``), embeddings and lm_head unquantized, and the format is a bitsandbytes one or a plain dtype
    equal to the compute dtype.
    """
    if spec is None:
        return None
    uniform = (spec.format_for("attention") == spec.weights == spec.format_for("mlp")
               and spec.embeddings is None and spec.lm_head is None
               and spec.keep_first_layers == 0 and spec.keep_last_layers == 0
               and all(o.format == spec.weights for o in spec.block_formats))
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


def uses_bitsandbytes(strategy: CompressionStrategy) -> bool:
    """Whether any module group gets a bitsandbytes format (the run then imports bitsandbytes)."""
    spec = strategy.quantization
    if spec is None:
        return False
    formats = {spec.weights, spec.attention, spec.mlp, spec.embeddings, spec.lm_head}
    return bool(formats & set(BNB_FORMATS))


def group_format(spec: QuantizationSpec | None, component: str, kind: str, layer: int | None,
                 num_layers: int, original_layer: int | None = None) -> str:
    """The format a module group ends up in under ``spec`` (what ``executors.steps.quantize`` does):
    block Linears get their per-block format (``block_formats``, by ``original_layer``, the block's index
    in the original model after layer pruning or a student), else their group's format, the first/last ``keep_*_layers`` blocks ``keep_format``,
    embeddings and lm_head their own setting; everything else (norms, poolers, unset groups) the
    compute dtype. Without a spec everything stays float32."""
    if spec is None:
        return "fp32"
    if kind == "linear" and layer is not None:
        group = "attention" if component == "attention" else "mlp" if component in (
            "mlp", "experts", "shared_experts", "router") else None
        if group is not None:
            return spec.block_format(layer, group, num_layers, original_layer)
        if layer < spec.keep_first_layers or layer >= num_layers - spec.keep_last_layers:
            return spec.keep_format
    if component == "embeddings" and kind == "embedding":
        return spec.embeddings or spec.compute_dtype
    if component == "lm_head":
        return spec.lm_head or spec.compute_dtype
    return spec.compute_dtype
