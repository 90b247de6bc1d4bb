"""The work of one forward step: weight bytes read and FLOPs (the inputs of planner.speed.step).

- Decode step (batch ``b``, ``S`` cached tokens), per device: weight bytes read = every stored tensor
  except the token-embedding gather (a tied embedding is read once as lm_head); MoE layers read the
  experts touched by the batch, ``E x (1 - (1 - k/E)^b)`` of ``E``; plus ``b x KV bytes(S)``.
  FLOPs = ``b x (2 x active non-embedding params + 2 x 2 x layers x heads x head_dim x S)``.
- Prefill of ``T`` tokens: ``FLOPs = 2 x active non-embedding params x T x b`` plus attention
  ``2 x 2 x layers x heads x head_dim x T x min(T, window) / 2`` (causal) (Kaplan et al. 2020, eq. 2.1;
  llm-analysis).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.memory.weights import WeightBytes
from planner.models.spec import ModelSpec


@dataclass(frozen=True)
class ReadBytes:
    """Weight bytes read per decode step on one device: a fixed part and the MoE experts."""

    dense: float
    experts: float
    num_experts: int
    experts_per_token: int

    def at(self, tokens):
        """Bytes read by a step over ``tokens`` routed tokens (the batch in decode, batch x prompt in prefill)."""
        if not self.experts:
            return self.dense
        return self.dense + self.experts * experts_touched(self.num_experts, self.experts_per_token, tokens) / self.num_experts


def experts_touched(num_experts, experts_per_token, tokens):
    """Expected distinct experts a step over ``tokens`` routed tokens runs per MoE layer:
    ``E x (1 - (1 - k/E)^tokens)`` (uniform routing). Floats or numpy arrays."""
    return num_experts * (1.0 - (1.0 - experts_per_token / num_experts) ** tokens)


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


def _linear_and_width(spec: ModelSpec) -> tuple[float, int]:
    embed = sum(g.params for g in spec.param_groups if g.kind == "embedding")
    a = spec.attention
    return spec.params.active - embed, a.num_heads * (a.mla.qk_nope_head_dim + a.mla.qk_rope_head_dim if a.mla else a.head_dim)


def _span(spec: ModelSpec, tokens: int) -> int:
    """Sum over layers of the keys one query at position ``tokens`` attends to."""
    a = spec.attention
    window = a.sliding_window
    return sum(min(tokens, window) if (t == "sliding_attention" and window) else tokens for t in a.layer_types)


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one step: the weight matmuls and the attention over the cache."""

    linear: float
    attention: float

    @property
    def total(self) -> float:
        return self.linear + self.attention

    def split(self, devices: int) -> StepFlops:
        """The share of one of ``devices`` tensor-parallel devices."""
        return StepFlops(self.linear / devices, self.attention / devices)


def prefill_step_flops(spec: ModelSpec, tokens: int, batch: int) -> StepFlops:
    """A prefill of ``tokens`` tokens for ``batch`` sequences: 2 x params x tokens + attention (causal:
    half the score matrix; an encoder attends to every position)."""
    linear, width = _linear_and_width(spec)
    share = 1.0 if spec.architecture == "encoder" else 0.5
    return StepFlops(batch * 2 * linear * tokens, batch * 2 * 2 * width * tokens * _span(spec, tokens) * share)


def decode_step_flops(spec: ModelSpec, context: int, batch: int) -> StepFlops:
    """One decode step of ``batch`` sequences with ``context`` tokens in the cache."""
    linear, width = _linear_and_width(spec)
    return StepFlops(batch * 2 * linear, batch * 2 * 2 * width * _span(spec, context))


def prefill_flops(spec: ModelSpec, tokens: int, batch: int) -> float:
    """FLOPs of a prefill of ``tokens`` tokens for ``batch`` sequences (2 x params x tokens + attention)."""
    return prefill_step_flops(spec, tokens, batch).total


def decode_flops(spec: ModelSpec, context: int, batch: int) -> float:
    """FLOPs of one decode step of ``batch`` sequences with ``context`` tokens in the cache."""
    return decode_step_flops(spec, context, batch).total
