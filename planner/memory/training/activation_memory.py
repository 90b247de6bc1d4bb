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
    """Activation bytes of one sequence as ``per_token x s + per_token_sq x s^2`` (times the batch).

    ``stored`` is alive from the forward pass until each layer's backward; ``recompute`` is the
    layer rebuilt by checkpointing during backward; ``workspace`` the gradients of the layer in
    backward; ``host`` what activation offloading keeps in CPU RAM instead.
    """

    stored_per_token: float
    stored_per_token_sq: float
    recompute_per_token: float
    recompute_per_token_sq: float
    workspace_per_token: float
    host_per_token: float
    host_per_token_sq: float
    layer_per_token: float
    checkpoint_per_token: float
    grad_layers: int
    largest_tensors: tuple[tuple[str, float], ...]
    live_tensors: int = 0
    layer_tensors_per_token: tuple[float, ...] = ()

    def stored(self, batch: int, seq_len: int) -> float:
        return batch * seq_len * (self.stored_per_token + self.stored_per_token_sq * seq_len)

    def upper(self, other: "ActivationMemory") -> "ActivationMemory":
        """The larger of two variants, coefficient by coefficient (for the safe bound)."""
        larger = {name: max(getattr(self, name), getattr(other, name)) for name in (
            "stored_per_token", "stored_per_token_sq", "recompute_per_token", "recompute_per_token_sq",
            "workspace_per_token", "live_tensors")}
        return replace(self, **larger)

    def tensor_sizes(self, batch: int, seq_len: int, checkpointing: str) -> dict[float, float]:
        """``{bytes: count}`` of the stored tensors (for planner.memory.weights.allocator_waste)."""
        tokens = batch * seq_len
        sizes: dict[float, float] = {}

        def add(size: float, count: float) -> None:
            if size > 0:
                sizes[size] = sizes.get(size, 0) + count
        if checkpointing == "full":
            add(self.checkpoint_per_token * tokens, self.grad_layers)
            for per_token in self.layer_tensors_per_token:
                add(per_token * tokens, 1)
        else:
            for per_token in self.layer_tensors_per_token:
                add(per_token * tokens, self.grad_layers)
        return sizes

    def backward_peak(self, batch: int, seq_len: int) -> float:
        """Stored tensors + the recomputed layer + that layer's gradient workspace."""
        extra = self.recompute_per_token + self.recompute_per_token_sq * seq_len + self.workspace_per_token
        return self.stored(batch, seq_len) + batch * seq_len * extra


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


def _split(saved: dict[str, float], saved_at_one: dict[str, float]) -> tuple[float, float]:
    """(bytes per token independent of s, bytes per token per token of s) of one layer."""
    linear = sum(saved.values())
    return linear, sum(saved_at_one.values()) - linear


def activation_memory(spec: ModelSpec, settings: ActivationSettings, plan: TrainablePlan, *,
                      checkpointing: str = "none", offload: bool = False, seq_len: int = 0) -> ActivationMemory:
    """Activation coefficients of one sequence (see :class:`ActivationMemory`); ``seq_len`` sizes the
    eager-attention score gradients of the backward workspace (which holds either those or the MLP's)."""
    if checkpointing not in CHECKPOINTING:
        raise InvalidRequestError(
            f"unknown gradient checkpointing {checkpointing!r}; use one of {', '.join(CHECKPOINTING)}.")
    if checkpointing == "selective":
        settings = replace(settings, attention="flash")
    caches: tuple[dict, dict] = ({}, {})
    grad_layers = range(plan.first_grad_layer, spec.num_layers)
    parts = [_split(_layer_bytes(spec, settings, plan, i, 0, caches[0]),
                    _layer_bytes(spec, settings, plan, i, 1, caches[1])) for i in grad_layers]
    largest = max(parts, key=lambda part: part[0] + part[1] * 4096, default=(0.0, 0.0))
    checkpoint = float(settings.residual_bytes * spec.hidden_size)
    model_level = model_level_bytes(spec, settings, plan)
    if checkpointing == "full":
        unit = (checkpoint, 0.0)
        stored = (checkpoint * len(parts), 0.0)
        recompute = largest
    else:
        unit = largest
        stored = (sum(p[0] for p in parts), sum(p[1] for p in parts))
        recompute = (0.0, 0.0)
    host = (0.0, 0.0)
    if offload and parts:
        host = stored
        stored = (min(stored[0], 2 * unit[0]), min(stored[1], 2 * unit[1]))
    saved_one = _layer_bytes(spec, settings, plan, spec.num_layers - 1, 0, caches[0]) if parts else {}
    biggest = tuple(sorted(saved_one.items(), key=lambda kv: -kv[1])[:6])
    per_layer_tensors = len(saved_one)
    live = len(parts) + per_layer_tensors if checkpointing == "full" else len(parts) * per_layer_tensors
    return ActivationMemory(
        stored_per_token=stored[0] + model_level, stored_per_token_sq=stored[1],
        recompute_per_token=recompute[0], recompute_per_token_sq=recompute[1],
        workspace_per_token=backward_workspace(spec, settings, seq_len) if parts else 0.0,
        host_per_token=host[0], host_per_token_sq=host[1], layer_per_token=largest[0],
        checkpoint_per_token=checkpoint, grad_layers=len(parts), largest_tensors=biggest, live_tensors=live,
        layer_tensors_per_token=tuple(saved_one.values()))
