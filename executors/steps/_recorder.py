"""Collects the facts of a step while it runs and turns them into a :class:`StepReport`."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel
from torch import nn

from executors.steps.report import ModuleChange, SkippedModule, StepReport
from executors.steps.storage import count_params, count_zeros, state_dict_bytes


class Recorder:
    """Measures the model before a step; :meth:`finish` measures it after and builds the report."""

    def __init__(self, step: str, spec: BaseModel, model: nn.Module):
        self.step = step
        self.spec = spec
        self._start = time.perf_counter()
        self.params_before = count_params(model)
        self.zeros_before = count_zeros(model)
        self.bytes_before = state_dict_bytes(model)
        self.modules: list[ModuleChange] = []
        self.skipped: list[SkippedModule] = []
        self.notes: list[str] = []
        self.storage: dict[str, int] = {}
        self.metrics: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []
        self.structure: dict[str, Any] = {}

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(SkippedModule(name=name, reason=reason))

    def change(self, **fields: Any) -> None:
        self.modules.append(ModuleChange(**fields))

    def finish(self, model: nn.Module, summary: str, *, params_after: int | None = None) -> StepReport:
        return StepReport(
            step=self.step, spec=self.spec.model_dump(exclude_none=True), summary=summary,
            modules=self.modules, skipped=self.skipped,
            params_before=self.params_before,
            params_after=count_params(model) if params_after is None else params_after,
            zeros_before=self.zeros_before, zeros_after=count_zeros(model),
            state_bytes_before=self.bytes_before, state_bytes_after=state_dict_bytes(model),
            storage=self.storage, metrics=self.metrics, history=self.history, structure=self.structure,
            notes=self.notes,
            seconds=time.perf_counter() - self._start)
