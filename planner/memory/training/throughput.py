"""Training speed, time and cost from FLOPs per token and model FLOPs utilisation (MFU).

FLOPs per token (Kaplan et al. 2020 section 2.1; PaLM, Chowdhery et al. 2022, appendix B: ``6N + 12LHQT``):

- forward: ``2 x P_matmul`` plus attention ``4 x L x s x (heads x head_dim)`` (QK^T and PV);
- backward, gradients of activations: the same again twice over (``4 x P_matmul + 8 x L x s x H x d``)
  in every layer gradients flow through, also when its weights are frozen (LoRA still back-propagates
  through the frozen base);
- backward, gradients of weights: ``2 x P_trainable`` (only trainable matmul parameters);
- full gradient checkpointing recomputes the forward of those layers once more.

``P_matmul`` counts the weights used in matmuls for each token: every Linear including the output
layer (MoE: only the routed experts), not embedding lookups. Full fine-tuning of a dense model gives
the familiar ``6P + 12 L s H d``. Throughput = GPUs x peak TFLOPS x MFU / FLOPs per token.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import InvalidRequestError
from planner.memory.training.trainable import TrainablePlan
from planner.models.spec import ModelSpec


@dataclass(frozen=True)
class TrainingFlops:
    per_token: float
    forward: float
    backward: float
    recompute: float
    formula: str


def matmul_params(spec: ModelSpec, layers: set[int] | None = None) -> float:
    """Linear weights each token multiplies with (routed experts only), optionally within ``layers``."""
    total = 0.0
    for group in spec.linear_groups():
        share = 1.0
        if group.component == "experts" and spec.moe is not None:
            share = spec.moe.experts_per_token / spec.moe.num_experts
        if layers is not None:
            if not group.layers:
                continue
            share *= sum(1 for i in group.layers if i in layers) / len(group.layers)
        total += group.params * share
    return total


def training_flops_per_token(spec: ModelSpec, plan: TrainablePlan, seq_len: int, checkpointing: str) -> TrainingFlops:
    """FLOPs of one training token (see the module docstring)."""
    a = spec.attention
    attention_width = a.num_heads * (a.mla.v_head_dim if a.mla else a.head_dim)
    grad_layers = set(range(plan.first_grad_layer, spec.num_layers))
    all_mm = matmul_params(spec)
    head_mm = all_mm - matmul_params(spec, set(range(spec.num_layers)))
    grad_mm = matmul_params(spec, grad_layers) + head_mm
    attn_per_layer = 4.0 * seq_len * attention_width
    forward = 2.0 * all_mm + attn_per_layer * spec.num_layers
    trainable_mm = plan.adapter_params if plan.mode in ("lora", "qlora") else (
        all_mm if plan.mode == "full" else matmul_params(spec, set(plan.trainable_layers)))
    if plan.mode in ("lora", "qlora"):
        forward += 2.0 * plan.adapter_params
        trainable_mm += plan.trainable_copy_params
    backward = 2.0 * (grad_mm + (plan.adapter_params if plan.adapters else 0)) + 2.0 * attn_per_layer * len(grad_layers)
    backward += 2.0 * trainable_mm
    recompute = 0.0
    if checkpointing == "full":
        recompute = 2.0 * matmul_params(spec, grad_layers) + attn_per_layer * len(grad_layers)
    return TrainingFlops(forward + backward + recompute, forward, backward, recompute,
                         "2 P_mm + 4 L s H d (forward) + 4 P_mm,grad + 8 L_grad s H d + 2 P_trainable (backward)"
                         + (" + recompute 2 P_mm,grad + 4 L_grad s H d" if recompute else ""))


@dataclass(frozen=True)
class TrainingTime:
    tokens_per_second: float
    seconds: float
    gpu_hours: float
    cost_usd: float | None


def training_time(*, tokens: float, flops_per_token: float, gpus: int, peak_tflops: float, mfu: float,
                  usd_per_gpu_hour: float | None = None) -> TrainingTime:
    """Time and cost of training on ``tokens`` tokens: tokens/s = gpus x peak x MFU / FLOPs per token."""
    for name, value in (("tokens", tokens), ("gpus", gpus), ("peak_tflops", peak_tflops)):
        if not value or value <= 0:
            raise InvalidRequestError(f"{name} must be positive to estimate training time, got {value!r}.")
    if not 0 < mfu <= 1:
        raise InvalidRequestError(f"mfu must be in (0, 1], got {mfu!r}.")
    rate = gpus * peak_tflops * 1e12 * mfu / flops_per_token
    seconds = tokens / rate
    gpu_hours = seconds * gpus / 3600
    cost = gpu_hours * usd_per_gpu_hour if usd_per_gpu_hour is not None else None
    return TrainingTime(rate, seconds, gpu_hours, cost)
