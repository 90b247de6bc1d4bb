"""How a model is split over several GPUs, and what each device holds.

- Tensor parallel (``tp``, vLLM / Megatron style): attention heads, MLP columns, experts' columns,
  the vocab-parallel embedding and lm_head are split ``1/tp``; norms and routers are replicated.
  ``tp`` must divide the attention heads; K/V projections and the KV cache hold
  ``ceil(kv_heads / tp)`` heads per device (replicated when ``tp > kv_heads``, so ``kv_heads`` must
  divide ``tp`` in that case). Source: Megatron-LM column/row parallel linears; vLLM
  ``QKVParallelLinear`` (KV heads replicated when tp > num_kv_heads).
- Pipeline (``pp``; HF ``device_map="auto"``, llama.cpp ``--split-mode layer``): each device holds
  ``ceil(layers / pp)`` layers; the first also holds the embeddings, the last the final norm and
  lm_head. Estimates are for the most loaded device.
"""

from __future__ import annotations

import math
from planner.errors import InvalidRequestError
from planner.models.spec import ModelSpec, ParamGroup


def check_tensor_parallel(spec: ModelSpec, tp: int) -> str | None:
    """Why ``tp``-way tensor parallelism is impossible for ``spec`` (None when it is possible)."""
    heads, kv = spec.num_heads, spec.num_kv_heads
    if tp < 1:
        return "tensor-parallel size must be >= 1"
    if heads % tp:
        return f"{tp}-way tensor parallel does not divide the {heads} attention heads"
    if spec.attention.mla is None and kv % tp and tp % kv:
        return f"{tp}-way tensor parallel neither divides nor is a multiple of the {kv} KV heads"
    return None


def require_tensor_parallel(spec: ModelSpec, tp: int) -> None:
    reason = check_tensor_parallel(spec, tp)
    if reason:
        raise InvalidRequestError(f"{spec.name}: {reason}. Use a size that divides {spec.num_heads} "
                                  f"(or parallel='pipeline').")


def kv_heads_per_device(spec: ModelSpec, tp: int) -> int:
    """KV heads each device caches: ceil(kv_heads / tp), at least one (replicated beyond kv_heads)."""
    return max(1, math.ceil(spec.num_kv_heads / tp))


def shard_fraction(spec: ModelSpec, group: ParamGroup, tp: int) -> float:
    """Fraction of ``group`` one device holds under ``tp``-way tensor parallelism."""
    if tp == 1:
        return 1.0
    if group.kind == "norm" or group.role == "router" or group.kind == "parameter" and group.component != "attention":
        return 1.0
    kv_share = kv_heads_per_device(spec, tp) / spec.num_kv_heads
    if spec.attention.mla is None and group.role in ("k", "v"):
        return kv_share
    if spec.attention.mla is None and group.role == "qkv":
        q = spec.num_heads * spec.head_dim
        kv = 2 * spec.num_kv_heads * spec.head_dim
        return (q / tp + kv * kv_share) / (q + kv)
    if spec.attention.mla is not None and group.role in ("kv_a", "q_a"):
        return 1.0  # the latent down-projections are replicated (vLLM ReplicatedLinear)
    return 1.0 / tp


def layers_per_stage(spec: ModelSpec, pp: int) -> int:
    return math.ceil(spec.total_layers / pp)


def layer_fraction(spec: ModelSpec, pp: int) -> float:
    """Share of the layer stack on one pipeline stage (``ceil(layers / pp) / layers``)."""
    return min(1.0, layers_per_stage(spec, pp) / spec.total_layers)
