"""What a compression step did, module by module (the record every step returns).

A :class:`StepReport` says what was applied, to which modules, with which effect (parameters, exact
zeros, stored bytes), which modules were left alone and why (never silently), and how long it took.
Byte counts are exact: they come from the tensors the model holds (see :mod:`executors.steps.storage`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class NoEffectError(RuntimeError):
    """A requested step changed nothing, or less than requested: the run fails with this reason."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModuleChange(_Record):
    """One module a step changed."""

    name: str = Field(description="module path in the model (model.layers.0.mlp.up_proj)")
    action: str = Field(description="what was done: 'nf4', 'int8', 'pruned 50%', 'rank 64', 'removed', ...")
    params_before: int = Field(description="parameters (logical count, not packed storage elements)")
    params_after: int
    zeros_before: int = 0
    zeros_after: int = 0
    bytes_before: int = Field(description="bytes of the module's own tensors before the step")
    bytes_after: int
    detail: dict[str, Any] = Field(default_factory=dict, description="step-specific facts (shapes, rank, path)")


class SkippedModule(_Record):
    """A module the step could have touched but did not, with the reason."""

    name: str
    reason: str


class StepReport(_Record):
    """The record of one applied step (quantization, sparsity, distillation or low-rank)."""

    step: str = Field(description="'distillation', 'sparsity', 'low_rank' or 'quantization'")
    spec: dict[str, Any] = Field(description="the applied spec, as in the strategy JSON")
    summary: str = Field(description="one line: what was applied and its main effect")
    modules: list[ModuleChange] = Field(default_factory=list)
    skipped: list[SkippedModule] = Field(default_factory=list)
    params_before: int
    params_after: int
    zeros_before: int = Field(description="exact zeros in the floating-point parameters before the step")
    zeros_after: int
    state_bytes_before: int = Field(description="bytes of every tensor in the state dict (shared tensors once)")
    state_bytes_after: int
    storage: dict[str, int] = Field(default_factory=dict, description="extra exact storage figures, e.g. "
                                    "the 2:4 semi-structured size of the pruned weights")
    metrics: dict[str, float] = Field(default_factory=dict, description="quality/loss figures the step measured")
    history: list[dict[str, Any]] = Field(default_factory=list, description="per gradual step / per logged "
                                          "training step records")
    structure: dict[str, Any] = Field(default_factory=dict, description="what a structural step kept: "
                                      "kept_layers (indices into the step's input model), intermediate_size, "
                                      "kept key/value groups per layer, ...")
    notes: list[str] = Field(default_factory=list, description="facts a reader needs (e.g. 'speed unchanged on "
                             "CPU: no sparse kernels')")
    seconds: float = Field(description="wall time of the step")

    def skipped_reasons(self) -> dict[str, str]:
        return {s.name: s.reason for s in self.skipped}
