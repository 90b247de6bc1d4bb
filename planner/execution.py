"""How the executors apply a strategy, as pure facts the planner can reason about without torch.

Shared by ``executors.loading`` (which does it) and ``planner.memory.cpu`` (which predicts its
memory), so the prediction and the measurement always describe the same run:

- a quantization-only strategy whose Linear layers all get one bitsandbytes format, or one plain
  dtype equal to the compute dtype, is applied while loading (transformers ``BitsAndBytesConfig`` /
  ``dtype``); everything else is loaded in float32 and changed by the compression steps;
- the rest of the model (embeddings, norms, lm_head) is held in the compute dtype.
"""

from __future__ import annotations

from planner.strategy import CompressionStrategy, QuantizationSpec

BNB_FORMATS: tuple[str, ...] = ("int8", "nf4", "nf4-dq", "fp4", "fp4-dq")
DTYPE_FORMATS: tuple[str, ...] = ("fp32", "bf16", "fp16")


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


def uses_bitsandbytes(strategy: CompressionStrategy) -> bool:
    """Whether any module group gets a bitsandbytes format (the run then imports bitsandbytes)."""
    spec = strategy.quantization
    if spec is None:
        return False
    formats = {spec.weights, spec.attention, spec.mlp, spec.embeddings, spec.lm_head}
    return bool(formats & set(BNB_FORMATS))


def group_format(spec: QuantizationSpec | None, component: str, kind: str, layer: int | None,
                 num_layers: int) -> str:
    """The format a module group ends up in under ``spec`` (what ``executors.steps.quantize`` does):
    block Linears get their group's format, the first/last ``keep_*_layers`` blocks ``keep_format``,
    embeddings and lm_head their own setting; everything else (norms, poolers, unset groups) the
    compute dtype. Without a spec everything stays float32."""
    if spec is None:
        return "fp32"
    if kind == "linear" and layer is not None:
        if layer < spec.keep_first_layers or layer >= num_layers - spec.keep_last_layers:
            return spec.keep_format
        if component == "attention":
            return spec.format_for("attention")
        if component in ("mlp", "experts", "shared_experts", "router"):
            return spec.format_for("mlp")
    if component == "embeddings" and kind == "embedding":
        return spec.embeddings or spec.compute_dtype
    if component == "lm_head":
        return spec.lm_head or spec.compute_dtype
    return spec.compute_dtype
