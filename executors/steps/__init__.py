"""Compression steps applied for real: one handler per spec type, applied in the seed documents' order.

Each part of a :class:`~planner.strategy.CompressionStrategy` has a handler registered for its spec
type (the torchao pattern: a config type maps to the function that applies it)::

    @register_step(SparsitySpec)
    def prune(model, spec, context, strategy) -> tuple[nn.Module, StepReport]: ...

:func:`apply_step` looks the handler up (an unregistered type raises an error listing the registered
ones) and :func:`apply_strategy` applies distill -> prune -> low-rank -> quantize. Handlers get the whole
strategy because earlier steps adapt to later ones (an MLP pruned before a 4-bit step keeps widths
the 4-bit kernel can take). A handler may return a new model (distillation returns the student).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from executors._imports import import_torch

import_torch("the compression steps")  # a missing exec extra is one clear error, not a traceback
from torch import nn  # noqa: E402

from planner.errors import UnsupportedError  # noqa: E402
from planner.strategy import CompressionStrategy, DistillationSpec, LowRankSpec, QuantizationSpec, SparsitySpec
from executors.steps.context import StepContext  # noqa: E402
from executors.steps.report import ModuleChange, SkippedModule, StepReport  # noqa: E402

Handler = Callable[[nn.Module, BaseModel, StepContext, CompressionStrategy], tuple[nn.Module, StepReport]]

# Strategy field of each spec type, in application order.
STEP_ORDER: tuple[tuple[str, type[BaseModel]], ...] = (
    ("distillation", DistillationSpec), ("sparsity", SparsitySpec), ("low_rank", LowRankSpec),
    ("quantization", QuantizationSpec),
)
_HANDLERS: dict[type[BaseModel], Handler] = {}


def register_step(spec_type: type[BaseModel]) -> Callable[[Handler], Handler]:
    """Register the decorated function as the handler of ``spec_type``."""
    def decorate(handler: Handler) -> Handler:
        _HANDLERS[spec_type] = handler
        return handler
    return decorate


def registered_steps() -> tuple[type[BaseModel], ...]:
    return tuple(_HANDLERS)


def apply_step(model: nn.Module, spec: BaseModel, context: StepContext,
               strategy: CompressionStrategy | None = None) -> tuple[nn.Module, StepReport]:
    """Apply one spec to ``model``; returns the (possibly new) model and the step's report.

    ``strategy`` is the whole plan the spec belongs to (default: a strategy holding only ``spec``).
    """
    handler = _HANDLERS.get(type(spec))
    if handler is None:
        names = ", ".join(t.__name__ for t in _HANDLERS)
        raise UnsupportedError(f"no compression step is registered for {type(spec).__name__}; "
                               f"registered: {names}.")
    if strategy is None:
        field = next((f for f, t in STEP_ORDER if isinstance(spec, t)), None)
        strategy = CompressionStrategy(**{field: spec}) if field else CompressionStrategy()
    return handler(model, spec, context, strategy)


def apply_strategy(model: nn.Module, strategy: CompressionStrategy,
                   context: StepContext) -> tuple[nn.Module, list[StepReport]]:
    """Apply every part of ``strategy`` in order (distill -> prune -> low-rank -> quantize)."""
    reports = []
    for field, _ in STEP_ORDER:
        spec = getattr(strategy, field)
        if spec is not None:
            model, report = apply_step(model, spec, context, strategy)
            reports.append(report)
    return model, reports


# Importing the step modules registers their handlers.
from executors.steps import distill, lowrank, prune, quantize  # noqa: E402,F401

__all__ = [
    "STEP_ORDER", "ModuleChange", "SkippedModule", "StepContext", "StepReport", "apply_step", "apply_strategy",
    "register_step", "registered_steps",
]
