"""Which parameters a fine-tuning mode trains, as tensor shapes the optimizer keeps state for.

- ``full``: every parameter.
- ``lora`` / ``qlora``: only the adapters (:mod:`planner.memory.training.lora`), plus full trainable
  copies of the input embeddings and the output layer when ``train_embeddings`` is set (peft
  ``modules_to_save``: the original stays frozen, a copy is trained).
- ``freeze``: every parameter of the last ``trainable_layers`` decoder layers (LLaMA-Factory
  ``finetuning_type=freeze``, ``freeze_trainable_layers``, default 2); nothing before the first
  trainable layer needs a gradient, so those layers keep no activations for backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from planner.errors import InvalidRequestError
from planner.memory.training.lora import Adapter, adapter_params, default_targets, lora_adapters
from planner.models.spec import ModelSpec, ParamGroup

Mode = Literal["full", "lora", "qlora", "freeze"]
MODES: tuple[str, ...] = ("full", "lora", "qlora", "freeze")
LinearMode = Literal["trainable", "lora", "frozen"]


@dataclass(frozen=True)
class TensorShape:
    """``count`` trainable tensors of this shape (what per-tensor optimizer state depends on)."""

    shape: tuple[int, ...]
    count: int

    @property
    def numel(self) -> int:
        total = 1
        for size in self.shape:
            total *= size
        return total


@dataclass(frozen=True)
class TrainablePlan:
    """The trainable part of a fine-tuning run."""

    mode: Mode
    tensors: tuple[TensorShape, ...]
    adapters: tuple[Adapter, ...]
    frozen_params: int = 0
    trainable_copy_params: int = 0
    first_grad_layer: int = 0
    trainable_layers: frozenset[int] = frozenset()
    copy_tensors: tuple[TensorShape, ...] = ()

    @property
    def adapter_tensors(self) -> tuple[TensorShape, ...]:
        """Trainable tensors that are not full copies of embeddings / output layer."""
        return tuple(t for t in self.tensors if t not in self.copy_tensors) if self.copy_tensors else self.tensors

    @property
    def trainable_params(self) -> int:
        return sum(t.numel * t.count for t in self.tensors)

    @property
    def adapter_params(self) -> int:
        return adapter_params(self.adapters)

    @property
    def largest_tensor(self) -> int:
        return max((t.numel for t in self.tensors), default=0)

    def linear_mode(self, group: ParamGroup, layer: int) -> LinearMode:
        """How a Linear group behaves in ``layer``: weight trained, adapted by LoRA, or frozen."""
        if self.mode == "full" or (self.mode == "freeze" and layer in self.trainable_layers):
            return "trainable"
        if any(a.module.split("[")[0] == group.name for a in self.adapters):
            return "lora"
        return "frozen"

    def norms_trainable(self, layer: int) -> bool:
        return self.mode == "full" or (self.mode == "freeze" and layer in self.trainable_layers)


def group_tensors(spec: ModelSpec, group: ParamGroup) -> list[TensorShape]:
    """The parameter tensors of one group: Linear weight ``(out, in)`` (+ bias), embedding table
    ``(rows, width)``, norms and other vectors 1-D (a LayerNorm's weight and bias are kept as one
    1-D entry of both: per-tensor optimizer state is the same for 1-D tensors)."""
    if group.kind == "linear":
        shapes = [TensorShape((group.out_features, group.in_features), group.count)]
        if group.bias:
            shapes.append(TensorShape((group.out_features,), group.count))
        return shapes
    if group.kind == "embedding":
        width = (spec.embeddings.projection_dim or spec.hidden_size) if group.name == "embed_tokens" \
            else spec.hidden_size
        if group.params_each % width == 0:
            return [TensorShape((group.params_each // width, width), group.count)]
    return [TensorShape((group.params_each,), group.count)]


def all_tensors(spec: ModelSpec, groups: tuple[ParamGroup, ...] | list[ParamGroup]) -> list[TensorShape]:
    return [shape for group in groups for shape in group_tensors(spec, group)]


def _adapter_tensors(adapters: tuple[Adapter, ...]) -> list[TensorShape]:
    tensors = []
    for adapter in adapters:
        tensors.append(TensorShape((adapter.rank, adapter.in_features), adapter.count))
        tensors.append(TensorShape((adapter.out_features, adapter.rank), adapter.count))
    return tensors


def plan_trainable(spec: ModelSpec, mode: str, *, lora_rank: int = 8,
                   lora_targets: tuple[str, ...] | None = None, train_embeddings: bool = False,
                   trainable_layers: int = 2) -> TrainablePlan:
    """The trainable tensors of ``spec`` under ``mode`` (see the module docstring)."""
    if mode not in MODES:
        raise InvalidRequestError(f"unknown fine-tuning mode {mode!r}; use one of {', '.join(MODES)}.")
    total = spec.params.total
    if mode == "full":
        return TrainablePlan(mode="full", tensors=tuple(all_tensors(spec, spec.param_groups)), adapters=(),
                             trainable_layers=frozenset(range(spec.num_layers)))
    if mode == "freeze":
        if isinstance(trainable_layers, bool) or not isinstance(trainable_layers, int) or not (
                1 <= trainable_layers <= spec.num_layers):
            raise InvalidRequestError(
                f"trainable_layers must be between 1 and {spec.num_layers} (the model's layers) for "
                f"mode 'freeze', got {trainable_layers!r}.")
        first = spec.num_layers - trainable_layers
        chosen = frozenset(range(first, spec.num_layers))
        groups = [g for g in spec.param_groups if g.name.startswith("layers.") and g.layers]
        tensors = []
        for group in groups:
            share = sum(1 for i in group.layers if i in chosen)
            if share:
                per_layer = group.count // len(group.layers)
                tensors += [TensorShape(t.shape, t.count // group.count * share * per_layer)
                            for t in all_tensors(spec, [group])]
        trainable = sum(t.numel * t.count for t in tensors)
        return TrainablePlan(mode="freeze", tensors=tuple(tensors), adapters=(), frozen_params=total - trainable,
                             first_grad_layer=first, trainable_layers=chosen)
    adapters = lora_adapters(spec, lora_rank, lora_targets or default_targets(spec))
    tensors = _adapter_tensors(adapters)
    copies: list[TensorShape] = []
    if train_embeddings:
        heads = [g for g in spec.param_groups if g.name == "embed_tokens" or g.role == "lm_head"]
        copies = all_tensors(spec, heads)
    return TrainablePlan(mode=mode, tensors=tuple(tensors + copies), adapters=adapters, frozen_params=total,
                         trainable_copy_params=sum(t.numel * t.count for t in copies),
                         copy_tensors=tuple(copies))  # type: ignore[arg-type]
