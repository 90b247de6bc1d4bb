"""Roofline speed of inference: decode is bandwidth-bound, prefill compute-bound.

- Decode step (batch ``b``, ``S`` cached tokens), per device:
  ``time = (weight bytes read + b x KV bytes(S)) / (bandwidth x engine efficiency x kernel factor)``
  Weight bytes read: every stored tensor except the token-embedding gather (a tied embedding is read
  once as lm_head); MoE layers read the experts touched by the batch, ``E x (1 - (1 - k/E)^b)`` of
  ``E``. ``tokens/s = b / time``, times the engine's multi-GPU efficiency when split.
- Prefill of ``T`` tokens: ``FLOPs = 2 x active non-embedding params x T x b`` plus attention
  ``2 x 2 x layers x heads x head_dim x T x min(T, window) / 2`` (causal), at the peak TFLOPS of the
  format's matmul dtype x the engine's MFU.
The efficiencies are named, sourced engine constants (engines.toml); kernel factors are per format and
engine (formats.toml ``decode_speed``). Unknown bandwidth or TFLOPS give None, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware_db import Accelerator
from planner.formats import WeightFormat
from planner.memory.engines import EngineProfile
from planner.memory.weights import WeightBytes
from planner.models.spec import ModelSpec


@dataclass(frozen=True)
class ReadBytes:
    """Weight bytes read per decode step on one device: a fixed part and the MoE experts."""

    dense: float
    experts: float
    num_experts: int
    experts_per_token: int

    def at(self, batch: int) -> float:
        if not self.experts:
            return self.dense
        touched = 1.0 - (1.0 - self.experts_per_token / self.num_experts) ** batch
        return self.dense + self.experts * touched


def read_bytes(spec: ModelSpec, weights: WeightBytes, tp: int = 1) -> ReadBytes:
    """Weight bytes one decode step reads on one of ``tp`` devices."""
    dense = experts = 0.0
    for item in weights.groups:
        group = item.group
        if group.component == "embeddings" and group.kind == "embedding":
            if group.name == "embed_tokens" and spec.tie_word_embeddings and not weights.separate_lm_head:
                dense += item.bytes  # the tied matrix is read in full as lm_head
            continue
        if group.component == "experts":
            experts += item.bytes
        else:
            dense += item.bytes
    moe = spec.moe
    return ReadBytes(dense / tp, experts / tp, moe.num_experts if moe else 0, moe.experts_per_token if moe else 0)


@dataclass(frozen=True)
class Speed:
    decode_tokens_per_s: float | None
    prefill_tokens_per_s: float | None
    kernel_factor: float
    kernel_factor_measured: bool
    basis: str


def decode_tokens_per_s(read: ReadBytes, kv_bytes: float, batch: int, acc: Accelerator, fmt: WeightFormat,
                        engine: EngineProfile, gpus: int = 1) -> float | None:
    """Generated tokens per second of the whole batch (None when the bandwidth is unknown)."""
    if acc.memory_bandwidth_gbps is None:
        return None
    kernel = fmt.decode_speed[engine.name].factor
    bandwidth = acc.memory_bandwidth_gbps * 1e9 * engine.decode_bandwidth_efficiency * kernel
    seconds = (read.at(batch) + kv_bytes) / bandwidth
    split = engine.multi_gpu_efficiency if gpus > 1 else 1.0
    return batch / seconds * split


def prefill_flops(spec: ModelSpec, tokens: int, batch: int) -> float:
    """FLOPs of a prefill of ``tokens`` tokens for ``batch`` sequences (2 x params x tokens + attention)."""
    embed = sum(g.params for g in spec.param_groups if g.kind == "embedding")
    linear = spec.params.active - embed
    a = spec.attention
    width = a.num_heads * (a.mla.qk_nope_head_dim + a.mla.qk_rope_head_dim if a.mla else a.head_dim)
    window = a.sliding_window
    span = sum(min(tokens, window) if (t == "sliding_attention" and window) else tokens for t in a.layer_types)
    attention = 2 * 2 * width * tokens * span / 2
    return batch * (2 * linear * tokens + attention)


def prefill_tokens_per_s(spec: ModelSpec, tokens: int, batch: int, acc: Accelerator, fmt: WeightFormat,
                         engine: EngineProfile, gpus: int = 1) -> float | None:
    """Prompt tokens processed per second (None when the matmul dtype's TFLOPS are unknown)."""
    peak = acc.peak_tflops(fmt.matmul_dtype)
    if not peak:
        return None
    split = gpus * (engine.multi_gpu_efficiency if gpus > 1 else 1.0)
    seconds = prefill_flops(spec, tokens, batch) / (peak * 1e12 * engine.prefill_mfu * split)
    return tokens * batch / seconds
