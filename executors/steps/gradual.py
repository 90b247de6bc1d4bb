"""The gradual pruning schedule of seeds/004 (``GradualPruningScheduler``).

The level rises in ``steps`` equal increments (``target * i / steps``). After each increment the model
can be fine-tuned, then it is scored; the schedule keeps the most-pruned state whose quality stays
within ``max_quality_drop`` of the unpruned model (relative drop ``(q0 - q) / |q0|``, so it works for
"minus perplexity" as well as for fidelities) and stops at the first increment that falls below.
Without a threshold every increment is applied (and scored when an evaluator is given).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from planner.errors import InvalidRequestError


@dataclass
class GradualResult:
    model: nn.Module
    level: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    baseline_quality: float | None = None
    quality: float | None = None
    stopped: str | None = None


class GradualPruningScheduler:
    """Raise the pruning level step by step, keep the best state above the quality threshold.

    ``prune_to(model, level) -> model`` prunes (in place or not) to the cumulative ``level``;
    ``finetune(model)`` optionally trains between increments (what it returns, e.g. its loss log, is kept
    in the step's history record); ``evaluator(model) -> float`` scores, higher is better.
    """

    def __init__(self, prune_to: Callable[[nn.Module, float], nn.Module], *, target_level: float, steps: int,
                 evaluator: Callable[[nn.Module], float] | None = None, max_quality_drop: float | None = None,
                 finetune: Callable[[nn.Module], Any] | None = None):
        if max_quality_drop is not None and evaluator is None:
            raise InvalidRequestError("max_quality_drop needs an evaluator to score each pruning step "
                                      "(StepContext.evaluator is None).")
        self.prune_to = prune_to
        self.target_level = target_level
        self.steps = steps
        self.evaluator = evaluator
        self.max_quality_drop = max_quality_drop
        self.finetune = finetune

    def levels(self) -> list[float]:
        return [self.target_level * i / self.steps for i in range(1, self.steps + 1)]

    def run(self, model: nn.Module) -> GradualResult:
        result = GradualResult(model=model)
        if self.evaluator is not None:
            result.baseline_quality = result.quality = float(self.evaluator(model))
        for level in self.levels():
            kept = copy.deepcopy(model) if self.max_quality_drop is not None else None
            model = self.prune_to(model, level)
            record: dict[str, Any] = {"level": level}
            if self.finetune is not None:
                record["finetune"] = self.finetune(model)
            if self.evaluator is not None:
                quality = float(self.evaluator(model))
                drop = (result.baseline_quality - quality) / abs(result.baseline_quality or 1.0)
                record.update(quality=quality, relative_drop=drop)
                if self.max_quality_drop is not None and drop > self.max_quality_drop:
                    record["accepted"] = False
                    result.history.append(record)
                    result.stopped = (f"level {level:g} dropped quality by {drop:.2%} > max_quality_drop "
                                      f"{self.max_quality_drop:.2%}; kept level {result.level:g}")
                    result.model = kept
                    return result
                result.quality = quality
            record["accepted"] = True
            result.history.append(record)
            result.model, result.level = model, level
        return result
