"""Activation memory of a whole training step: all layers, checkpointing and offloading.

Per-layer saved tensors come from :func:`planner.memory.training.activations.layer_saved`. This
module multiplies them by the tokens of a micro-batch and combines layers:

- ``none``: every layer where gradients flow keeps its saved tensors until its backward runs, so all
  of them are alive when backward starts (the usual peak).
- ``full`` (gradient checkpointing, transformers ``gradient_checkpointing_enable``): each layer keeps
  only its input (``residual_bytes x hidden`` per token); during backward one layer at a time is
  recomputed, so one layer's saved tensors come back on top of the checkpoints (Chen et al. 2016,
  "Training Deep Nets with Sublinear Memory Cost"; Korthikanti et al. 2022: ``2sbh`` per layer).
- ``selective`` (Korthikanti et al. 2022 section 5): only the core attention (QK^T, softmax, dropout,
  PV) is recomputed, so the ``heads x seq`` tensors of eager attention are never stored; with
  flash / SDPA attention this is the same as ``none``.
- activation offloading (torchtune ``enable_activation_offloading``): stored tensors go to host RAM as
  they are produced and come back for backward; the GPU holds at most two layers' worth (the one in
  use and the one in transfer).

Layers before the first layer with a trainable parameter (``freeze`` mode) keep nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from planner.errors import InvalidRequestError
from planner.memory.training.activations import ActivationSettings, backward_workspace, layer_saved
from planner.memory.training.trainable import TrainablePlan
from planner.models.spec import ModelSpec

Checkpointing = Literal["none", "full", "selective"]
CHECKPOINTING: tuple[str, ...] = ("none", "full", "selective")


@dataclass(frozen=True)
class ActivationMemory:
    """Bytes for one micro-batch on one GPU."""

    stored: float
    recompute: float
    workspace: float
    host: float
    per_layer_bytes_per_token: float
    checkpoint_bytes_per_token: float
    grad_layers: int
    tokens: int
    largest_tensors: tuple[tuple[str, float], ...]

    @property
    def backward_peak(self) -> float:
        """Stored tensors + the recomputed layer + that layer's gradient workspace."""
        return self.stored + self.recompute + self.workspace


def lora_ranks(plan: TrainablePlan) -> dict[str, int]:
    """Adapter rank summed per module (several slices of one fused module add up)."""
    ranks: dict[str, int] = {}
    for adapter in plan.adapters:
        base = adapter.module.split("[")[0]
        ranks[base] = ranks.get(base, 0) + adapter.rank
    return ranks


def _layer_bytes(spec: ModelSpec, settings: ActivationSettings, plan: TrainablePlan, layer: int,
                 seq_len: int, cache: dict) -> dict[str, float]:
    moe_layer = spec.moe is not None and layer in set(spec.moe.moe_layers)
    key = (plan.norms_trainable(layer), moe_layer, layer in plan.trainable_layers)
    if key not in cache:
        cache[key] = layer_saved(spec, settings, lambda g: plan.linear_mode(g, layer), seq_len=seq_len,
                                 norms_trainable=plan.norms_trainable(layer), lora_ranks=lora_ranks(plan),
                                 moe_layer=moe_layer)
    return cache[key]


def model_level_bytes(spec: ModelSpec, settings: ActivationSettings, plan: TrainablePlan) -> float:
    """Per-token saves outside the layers: embedding dropout mask, final norm input, lm_head input."""
    h, r = spec.hidden_size, settings.residual_bytes
    total = settings.dropout_mask_bytes * h if settings.hidden_dropout > 0 else 0.0
    if spec.norm.final:
        total += (4 if settings.norm_fp32_input else r) * h + 4
    head_trained = plan.mode == "full" or plan.trainable_copy_params > 0
    if head_trained and spec.architecture != "encoder":
        total += settings.matmul_bytes * h
    return total


def activation_memory(spec: ModelSpec, settings: ActivationSettings, plan: TrainablePlan, *, batch: int,
                      seq_len: int, checkpointing: str = "none", offload: bool = False) -> ActivationMemory:
    """Activation bytes of one micro-batch of ``batch`` sequences of ``seq_len`` tokens."""
    if checkpointing not in CHECKPOINTING:
        raise InvalidRequestError(
            f"unknown gradient checkpointing {checkpointing!r}; use one of {', '.join(CHECKPOINTING)}.")
    if checkpointing == "selective":
        settings = replace(settings, attention="flash")
    tokens = batch * seq_len
    cache: dict = {}
    grad_layers = range(plan.first_grad_layer, spec.num_layers)
    layers = [_layer_bytes(spec, settings, plan, i, seq_len, cache) for i in grad_layers]
    per_layer = [sum(saved.values()) for saved in layers]
    largest_layer = max(per_layer, default=0.0)
    checkpoint = float(settings.residual_bytes * spec.hidden_size)
    model_level = model_level_bytes(spec, settings, plan) * tokens
    if checkpointing == "full":
        unit = checkpoint
        stored = checkpoint * len(layers) * tokens
        recompute = largest_layer * tokens
    else:
        unit = largest_layer
        stored = sum(per_layer) * tokens
        recompute = 0.0
    host = 0.0
    if offload:
        host = stored
        stored = min(stored, 2 * unit * tokens)
    biggest = sorted(max(layers, key=lambda d: sum(d.values()), default={}).items(), key=lambda kv: -kv[1])[:6]
    return ActivationMemory(
        stored=stored + model_level, recompute=recompute,
        workspace=backward_workspace(spec, settings) * tokens if layers else 0.0, host=host,
        per_layer_bytes_per_token=largest_layer, checkpoint_bytes_per_token=checkpoint,
        grad_layers=len(layers), tokens=tokens, largest_tensors=tuple(biggest))
