"""The model a compression strategy produces, as a new :class:`ModelSpec` (no torch).

A derived student (fewer layers, narrower MLP) or a structurally pruned model (fewer attention heads,
FFN channels or layers) is a different architecture with its own exact parameter count. This module
edits the config dict the way :mod:`executors.steps` edits the Hugging Face config of the real model
and rebuilds the spec with :meth:`ModelSpec.from_config`, so a prediction and a measurement describe the
same model. The structural rules below are the single source of truth: the torch code calls them.

Rules (documented once, used by planner and executors alike):

- **Rounding** is half-up (``round_half_up(2.5) == 3``), never Python's banker's rounding.
- **Student depth** (``DistillationSpec.depth_ratio``): ``n = max(1, round_half_up(ratio * L))`` layers at
  the evenly spaced indices ``round_half_up(i * (L - 1) / (n - 1))``: first and last layer always kept,
  the rest "every k-th" (DistilBERT kept every other layer of BERT, arXiv 1910.01108).
- **Student width** (``width_ratio``) and **FFN pruning** (``level``): the MLP keeps
  ``round_half_up(F * keep)`` channels (the same number in every layer: the config has one
  ``intermediate_size``). When the strategy later quantizes the MLP to a bitsandbytes 4-bit format the
  width is rounded to a multiple of 64 (at least 64, at most the largest multiple of 64 <= F): the CPU
  4-bit kernel needs the output width of gate/up to be a multiple of 32 and the input width of down a
  multiple of the 64-value quantization block (measured, bitsandbytes 0.50.2; see ENVIRONMENT.md).
- **Attention heads** (``level``): whole key/value groups are removed, each with the query heads that
  share it (for MHA a group is one head), so the KV cache shrinks with the heads and every remaining
  group keeps ``num_heads / num_kv_heads`` query heads. ``kept = max(1, round_half_up(G * (1 - level)))``
  of the ``G = num_kv_heads`` groups. The per-head width stays; it is written into the config as
  ``head_dim`` because the head count no longer divides ``hidden_size`` into it. Needs a family whose
  attention reads ``head_dim`` from the config (:data:`HEAD_PRUNABLE_MODEL_TYPES`): BERT, GPT-2,
  GPT-NeoX, Falcon and OPT derive the head size from ``hidden_size / num_attention_heads``, so a
  head-pruned model of theirs has no valid config.
- **Which families** (:func:`structural_refusal`): layers and MLP channels of every single-stack
  family the planner describes (fused gate_up and Conv1D MLPs included; the width goes into the
  family's own key, :data:`FFN_WIDTH_KEYS`); not MoE expert widths. Encoder-decoder models (T5): MLP
  channels only, the same width in both stacks (one ``d_ff``).
- **Whole layers** (``level``): ``max(1, L - round_half_up(level * L))`` layers kept. Which ones: the
  executor keeps the blocks of highest influence on its calibration batches (:func:`kept_by_influence`,
  ShortGPT); the planner uses the same rule on the influence a sensitivity profile recorded
  (:func:`layers_kept`), else assumes the evenly spaced pick; ``kept_layers`` (from the executor's
  report) overrides both. The parameter count does not depend on the pick; the layer types of
  sliding/full attention mixes and the per-block formats (``block_formats``, addressed by original
  block index, :func:`original_blocks`) do.
- Unstructured and N:M sparsity, low-rank factorisation and quantization keep every shape: the spec is
  returned unchanged (low-rank changes the parameter count: :func:`low_rank_params`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from planner.errors import InvalidRequestError, UnsupportedError
from planner.models.spec import ModelSpec
from planner.strategy import CompressionStrategy, LowRankSpec, SparsitySpec

# Families whose attention reads the per-head width from the config (``head_dim``), so a model with
# fewer heads than hidden_size / head_dim has a valid config: the Llama-like decoders and Phi-3 (fused
# qkv_proj, rows [q | k | v]). The others compute it as hidden_size / num_heads in their attention
# module (BERT, GPT-2, GPT-NeoX, Falcon, OPT, Phi-1/2): fewer heads cannot be described or reloaded.
HEAD_PRUNABLE_MODEL_TYPES: tuple[str, ...] = ("gemma", "gemma2", "gemma3_text", "llama", "mistral", "phi3", "qwen2",
                                              "qwen3")
# Config key of the MLP width and of the layer count where a family does not use the common name.
FFN_WIDTH_KEYS: dict[str, str] = {"gpt2": "n_inner", "gpt_bigcode": "n_inner", "opt": "ffn_dim",
                                  "falcon": "ffn_hidden_size", "t5": "d_ff"}
LAYER_COUNT_KEYS: dict[str, str] = {"gpt2": "n_layer", "gpt_bigcode": "n_layer"}
# Families transformers can only build with remote code (not part of the library).
_REMOTE_CODE_MODEL_TYPES: tuple[str, ...] = ("qwen",)
STRUCTURAL_KINDS: dict[str, str] = {"layers": "whole-layer pruning", "ffn": "FFN-channel pruning",
                                    "heads": "attention-head pruning", "student": "a derived student"}
# bitsandbytes 4-bit formats and the width their CPU kernel needs (see module docstring).
BNB_4BIT_FORMATS: tuple[str, ...] = ("nf4", "nf4-dq", "fp4", "fp4-dq")
BNB_4BIT_ALIGNMENT = 64


def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves away from zero for positive values (2.5 -> 3)."""
    return math.floor(value + 0.5)


def student_layer_indices(num_layers: int, depth_ratio: float) -> list[int]:
    """Evenly spaced layers of a ``depth_ratio`` student, first and last included."""
    count = max(1, round_half_up(depth_ratio * num_layers))
    if count >= num_layers:
        return list(range(num_layers))
    if count == 1:
        return [0]
    return [round_half_up(i * (num_layers - 1) / (count - 1)) for i in range(count)]


def kept_layer_count(num_layers: int, level: float) -> int:
    """Layers left after removing the fraction ``level`` of ``num_layers`` (at least one)."""
    return max(1, num_layers - round_half_up(level * num_layers))


def kept_ffn_width(intermediate_size: int, keep_fraction: float, alignment: int = 1) -> int:
    """MLP channels kept out of ``intermediate_size`` when keeping ``keep_fraction`` of them.

    With ``alignment > 1`` the width is a multiple of it, between ``alignment`` and the largest multiple
    not above ``intermediate_size`` (a width smaller than ``alignment`` cannot be aligned and is kept).
    """
    raw = intermediate_size * keep_fraction
    if alignment <= 1 or intermediate_size < alignment:
        return min(intermediate_size, max(1, round_half_up(raw)))
    ceiling = intermediate_size // alignment * alignment
    return min(ceiling, max(alignment, round_half_up(raw / alignment) * alignment))


def kept_kv_groups(num_kv_heads: int, level: float) -> int:
    """Key/value groups kept when removing the fraction ``level`` of attention heads (at least one)."""
    return max(1, round_half_up(num_kv_heads * (1 - level)))


def evenly_spaced_kept_layers(num_layers: int, kept: int) -> list[int]:
    """The default pick of ``kept`` layers out of ``num_layers``: evenly spaced, first and last kept."""
    return student_layer_indices(num_layers, kept / num_layers)


def kept_by_influence(influence: Sequence[float], count: int) -> list[int]:
    """The ``count`` blocks whole-layer pruning keeps: those of highest block influence, ties broken by the
    lower index, returned in ascending order.

    Block influence (ShortGPT, Men et al. 2024, arXiv 2403.03853) is ``1 - mean cos(h_in, h_out)`` of a
    block over calibration tokens: a block that barely changes its input is the first to go. The
    executors' pruning step calls this rule on the influence it measures; the planner calls it on the
    influence a sensitivity profile recorded, so both pick the same blocks, ties included.
    """
    values = [float(v) for v in influence]
    if not 1 <= count <= len(values):
        raise InvalidRequestError(f"cannot keep {count} of {len(values)} blocks: keep between 1 and {len(values)}.")
    if any(v != v for v in values):
        raise InvalidRequestError("block influence contains NaN: the calibration pass produced no finite value.")
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return sorted(order[:count])


def layers_kept(num_layers: int, level: float, influence: Sequence[float] | None = None) -> list[int]:
    """Blocks whole-layer pruning at ``level`` keeps: :func:`kept_by_influence` of the given per-block
    ``influence`` (as measured on the unpruned model), else the evenly spaced assumption."""
    count = kept_layer_count(num_layers, level)
    if influence is not None:
        if len(influence) != num_layers:
            raise InvalidRequestError(f"block influence has {len(influence)} values for a model of {num_layers} "
                                      f"blocks: it was measured on another model.")
        return kept_by_influence(influence, count)
    return evenly_spaced_kept_layers(num_layers, count)


def original_blocks(num_layers: int, strategy: CompressionStrategy,
                    influence: Sequence[float] | None = None) -> list[int] | None:
    """The original block index of each block of :func:`derive_spec`'s model of a ``num_layers`` model
    (None: the blocks are the original ones, or a named student's own). A depth student keeps
    :func:`student_layer_indices`; whole-layer pruning then keeps :func:`layers_kept` of those
    (``influence``, measured on the original model, applies only when no distillation came first: the
    executor measures the student's own)."""
    distill, sparsity = strategy.distillation, strategy.sparsity
    if distill is not None and distill.student is not None:
        return None
    blocks = list(range(num_layers))
    if distill is not None:
        influence = None
        if distill.depth_ratio is not None:
            blocks = student_layer_indices(num_layers, distill.depth_ratio)
    if sparsity is not None and sparsity.pattern == "layers":
        blocks = [blocks[i] for i in layers_kept(len(blocks), sparsity.level, influence)]
    return blocks if len(blocks) < num_layers else None


def influence_note(strategy: CompressionStrategy, influence: Sequence[float] | None) -> str | None:
    """How the planner picked the blocks whole-layer pruning keeps (None: the strategy prunes no layers)."""
    sparsity = strategy.sparsity
    if sparsity is None or sparsity.pattern != "layers":
        return None
    if strategy.distillation is not None:
        return ("layers pruning after distillation: kept blocks assumed evenly spaced (the executor measures "
                "the student's influence)")
    if influence is None:
        return "layers pruning: kept blocks assumed evenly spaced: no profile influence"
    note = "layers pruning: kept blocks as the executor's influence rule picks them (profile)"
    if sparsity.gradual_steps > 1 or sparsity.finetune_steps:
        note += ("; approximate: gradual pruning / fine-tuning recomputes influence on the partly pruned model, "
                 "the profile's is one-shot")
    return note


def ffn_alignment(strategy: CompressionStrategy | None) -> int:
    """Width multiple the MLP must keep for the strategy's later quantization step (1 = none)."""
    quant = strategy.quantization if strategy is not None else None
    if quant is not None and quant.format_for("mlp") in BNB_4BIT_FORMATS:
        return BNB_4BIT_ALIGNMENT
    return 1


def structural_refusal(spec: ModelSpec, kind: str) -> str | None:
    """Why ``spec``'s model cannot be cut structurally in the way ``kind`` names (None = it can).

    ``kind``: 'layers', 'ffn', 'heads' or 'student' (depth and width). The rules hold for every family
    :mod:`planner.models.hf_config` describes: layers and MLP channels of any single-stack model
    (dense MLP; fused gate_up included), heads where the config carries ``head_dim``.
    """
    if spec.architecture == "encoder-decoder" and kind != "ffn":
        return ("encoder-decoder models (two block stacks joined by cross-attention) are cut structurally only "
                "in their MLP width (FFN-channel pruning, both stacks); quantization, unstructured/N:M pruning "
                "and low-rank run on them")
    if spec.model_type in _REMOTE_CODE_MODEL_TYPES:
        return f"model_type {spec.model_type!r} needs remote code that transformers does not ship"
    if kind in ("ffn", "student") and spec.is_moe:
        return ("its MLPs are mixture-of-experts layers: expert widths are not pruned (the config has no single "
                "dense intermediate_size to shrink)")
    if kind == "heads":
        if spec.attention.mla is not None:
            return "multi-head latent attention (MLA) shares one compressed KV projection across heads"
        if spec.model_type not in HEAD_PRUNABLE_MODEL_TYPES:
            return (f"its attention computes the head size as hidden_size / num_attention_heads, so a model with "
                    f"fewer heads cannot be described by its config (and would not reload). Head pruning runs "
                    f"on: {', '.join(HEAD_PRUNABLE_MODEL_TYPES)}")
    return None


def check_structured_support(spec: ModelSpec, kind: str) -> None:
    """Raise :class:`UnsupportedError` when ``spec``'s model cannot be cut as ``kind`` (see
    :func:`structural_refusal`)."""
    reason = structural_refusal(spec, kind)
    if reason is not None:
        raise UnsupportedError(f"{STRUCTURAL_KINDS[kind]} is not available for model_type "
                               f"{spec.model_type!r}: {reason}.")


def check_structural_effect(spec: ModelSpec, sparsity: SparsitySpec, strategy: CompressionStrategy | None = None) -> None:
    """Raise :class:`InvalidRequestError` when structured ``sparsity`` would remove nothing from ``spec``.

    Whole units go (layers, key/value groups, aligned MLP channels), so a small level can round to zero
    units; such a step would change nothing and is refused before any work.
    """
    if not sparsity.structured:
        return
    if sparsity.pattern == "layers":
        units, kept, name = spec.num_layers, kept_layer_count(spec.num_layers, sparsity.level), "layers"
    elif sparsity.pattern == "heads":
        units, kept, name = spec.num_kv_heads, kept_kv_groups(spec.num_kv_heads, sparsity.level), "key/value groups"
    else:
        units = spec.mlp.intermediate_size
        kept = kept_ffn_width(units, 1 - sparsity.level, ffn_alignment(strategy))
        name = "MLP channels"
    if kept >= units:
        hint = (f"it has a single one and at least one is kept" if units == 1 else
                f"whole units are removed and the count rounds half up; a level above {0.5 / units:.3g} removes "
                f"one when no alignment applies")
        raise InvalidRequestError(f"{sparsity.summary()} keeps all {units} {name} of {spec.name}: the step would "
                                  f"change nothing ({hint}).")


def ffn_width_key(spec: ModelSpec) -> str:
    """The config key holding the MLP width of ``spec``'s family."""
    return FFN_WIDTH_KEYS.get(spec.model_type, "intermediate_size")


def ffn_config_updates(spec: ModelSpec, width: int) -> dict[str, int]:
    """Config keys of ``spec`` with an MLP of ``width`` channels."""
    return {ffn_width_key(spec): width}


def derive_spec(spec: ModelSpec, strategy: CompressionStrategy, *,
                kept_layers: Sequence[int] | None = None, influence: Sequence[float] | None = None) -> ModelSpec:
    """The spec of the model ``strategy`` turns ``spec`` into (same spec if no shape changes).

    ``kept_layers``: indices (into the possibly distilled model) that whole-layer pruning kept, as
    reported by the executor; default: :func:`layers_kept` with ``influence`` (per block of ``spec``'s
    model, e.g. a sensitivity profile's; ignored after a student) or the evenly spaced pick.
    """
    current = spec
    distill = strategy.distillation
    if distill is not None and distill.student is not None:
        from planner.models.resolve import get_model

        current = get_model(distill.student)
    elif distill is not None:
        check_structured_support(current, "student")
        config = dict(current.config)
        if distill.depth_ratio is not None:
            config.update(layer_config_updates(current, student_layer_indices(current.num_layers,
                                                                             distill.depth_ratio)))
        if distill.width_ratio is not None:
            config.update(ffn_config_updates(current, kept_ffn_width(current.mlp.intermediate_size,
                                                                     distill.width_ratio, ffn_alignment(strategy))))
        student = _rebuild(config, current, strategy)
        if student.params.total == current.params.total:
            raise InvalidRequestError(f"student {distill.summary()} keeps every layer and MLP channel of "
                                      f"{current.name}: it would be a copy. Use a smaller depth_ratio or width_ratio.")
        current = student
    if distill is not None:
        influence = None

    sparsity = strategy.sparsity
    if sparsity is not None and sparsity.structured:
        check_structured_support(current, sparsity.pattern)
        check_structural_effect(current, sparsity, strategy)
        current = _structurally_pruned(current, sparsity, strategy, kept_layers, influence)
    return current


def _structurally_pruned(spec: ModelSpec, sparsity: SparsitySpec, strategy: CompressionStrategy,
                         kept_layers: Sequence[int] | None, influence: Sequence[float] | None) -> ModelSpec:
    config = dict(spec.config)
    if sparsity.pattern == "layers":
        check_structured_support(spec, "layers")
        count = kept_layer_count(spec.num_layers, sparsity.level)
        indices = list(kept_layers) if kept_layers is not None else layers_kept(spec.num_layers, sparsity.level,
                                                                                 influence)
        if len(indices) != count or len(set(indices)) != count or not all(0 <= i < spec.num_layers for i in indices):
            raise InvalidRequestError(f"kept_layers must be {count} distinct indices in 0..{spec.num_layers - 1} "
                                      f"for level {sparsity.level}, got {list(indices)}.")
        config.update(layer_config_updates(spec, sorted(indices)))
    elif sparsity.pattern == "ffn":
        check_structured_support(spec, "ffn")
        config.update(ffn_config_updates(spec, kept_ffn_width(spec.mlp.intermediate_size, 1 - sparsity.level,
                                                              ffn_alignment(strategy))))
    elif sparsity.pattern == "heads":
        check_structured_support(spec, "heads")
        groups = kept_kv_groups(spec.num_kv_heads, sparsity.level)
        config.update(head_counts_config(spec, groups))
    return _rebuild(config, spec, strategy)


def head_counts_config(spec: ModelSpec, kept_groups: int) -> dict[str, int]:
    """Config keys of a model keeping ``kept_groups`` key/value groups (head size written as ``head_dim``)."""
    per_group = spec.num_heads // spec.num_kv_heads
    return {"num_attention_heads": kept_groups * per_group, "num_key_value_heads": kept_groups,
            "head_dim": spec.head_dim}


def layer_config_updates(spec: ModelSpec, indices: Sequence[int]) -> dict[str, Any]:
    """Config keys of ``spec`` keeping only the layers at ``indices`` (layer_types sliced to match)."""
    updates: dict[str, Any] = {LAYER_COUNT_KEYS.get(spec.model_type, "num_hidden_layers"): len(indices)}
    types = spec.attention.layer_types
    if "layer_types" in spec.config or len(set(types)) > 1:
        updates["layer_types"] = [types[i] for i in indices]
    return updates


def _rebuild(config: dict[str, Any], base: ModelSpec, strategy: CompressionStrategy) -> ModelSpec:
    return ModelSpec.from_config(config, name=f"{base.name} [{strategy.summary()}]", source=base.source)


def low_rank_rank(in_features: int, out_features: int, rank_ratio: float) -> int:
    """Rank of the factorisation of an ``in -> out`` Linear: ``ceil(ratio * min(in, out))``."""
    return math.ceil(rank_ratio * min(in_features, out_features))


def low_rank_saves(in_features: int, out_features: int, rank: int) -> bool:
    """Whether ``W ~ B A`` with ``A: in -> rank``, ``B: rank -> out`` has fewer weights than ``W``."""
    return rank * (in_features + out_features) < in_features * out_features


_LOW_RANK_COMPONENTS = {"all-linear": ("attention", "mlp"), "attention": ("attention",), "mlp": ("mlp",)}


def low_rank_params(spec: ModelSpec, low_rank: LowRankSpec) -> int:
    """Total parameters after factorising the block Linears ``low_rank`` targets.

    Each targeted ``in -> out`` Linear of the transformer blocks (attention and/or dense MLP projections;
    not embeddings, lm_head, routers or MoE experts) becomes ``in -> r`` (no bias) and ``r -> out``
    (the original bias), ``r = ceil(ratio * min(in, out))``: ``r (in + out)`` weights instead of
    ``in * out``. Layers where that would not save parameters stay whole.
    """
    total = spec.params.total
    for group in spec.linear_groups():
        if not group.layers or group.component not in _LOW_RANK_COMPONENTS[low_rank.targets]:
            continue
        rank = low_rank_rank(group.in_features, group.out_features, low_rank.rank_ratio)
        if low_rank_saves(group.in_features, group.out_features, rank):
            saved = group.in_features * group.out_features - rank * (group.in_features + group.out_features)
            total -= saved * group.count
    return total
