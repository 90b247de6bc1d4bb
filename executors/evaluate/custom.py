"""Any user function as an evaluator: ``fn(model, tokenizer) -> float``.

The baseline score is the function applied to the uncompressed model. To run in an isolated process
the function must be importable by name (a module-level function, not a lambda or closure): the child
process imports it from ``module:qualname``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from executors.evaluate.base import Reference, Score
from planner.errors import InvalidRequestError


def function_path(function: Callable) -> str:
    """``module:qualname`` of an importable function, or a clear error why it is not importable."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise InvalidRequestError(
            f"the evaluator {function!r} cannot be sent to an isolated process: pass a module-level function "
            f"of an importable module (not a lambda, closure or __main__ function), or run with isolate=False.")
    return f"{module}:{qualname}"


def import_function(path: str) -> Callable:
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


@dataclass(frozen=True)
class CallableEvaluator:
    function: Callable[[Any, Any], float]
    name: str = "custom"
    higher_is_better: bool = True

    kinds = ("encoder", "causal-lm")

    @property
    def metric(self) -> str:
        return self.name

    def spec(self) -> dict[str, Any]:
        return {"type": "callable", "function": function_path(self.function), "name": self.name,
                "higher_is_better": self.higher_is_better}

    def key(self) -> str:
        module = getattr(self.function, "__module__", "?")
        return f"callable-{module}.{getattr(self.function, '__qualname__', '?')}"

    def reference(self, model: Any, tokenizer: Any) -> Reference:
        return Reference(value=float(self.function(model, tokenizer)))

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score:
        return Score(value=float(self.function(model, tokenizer)))
