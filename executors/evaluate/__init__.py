"""Evaluators: how good a (compressed) model still is.

- ``perplexity`` (:class:`PerplexityEvaluator`): causal LMs, lower is better;
- ``fidelity`` (:class:`FidelityEvaluator`): mean cosine of sentence embeddings to the uncompressed
  model, plus nearest-neighbour agreement; the default for encoders;
- ``accuracy`` (:class:`AccuracyEvaluator`): classification accuracy on labelled texts;
- any function ``fn(model, tokenizer) -> float`` (:class:`CallableEvaluator`).

The uncompressed model's reference outputs are computed once and cached (:mod:`.reference`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from executors.evaluate.base import Evaluator, Reference, Score, retained_fraction
from executors.evaluate.classification import AccuracyEvaluator
from executors.evaluate.custom import CallableEvaluator, import_function
from executors.evaluate.fidelity import FidelityEvaluator
from executors.evaluate.perplexity import PerplexityEvaluator
from planner.errors import InvalidRequestError, UnsupportedError

EVALUATORS: dict[str, type] = {
    "perplexity": PerplexityEvaluator,
    "fidelity": FidelityEvaluator,
    "accuracy": AccuracyEvaluator,
}
DEFAULT_EVALUATOR = {"causal-lm": "perplexity", "encoder": "fidelity"}

EvaluatorLike = Evaluator | str | Callable[[Any, Any], float] | None


def get_evaluator(evaluator: EvaluatorLike, kind: str) -> Evaluator:
    """An evaluator from a name, a function or an evaluator object; ``None`` = the default for ``kind``."""
    if evaluator is None:
        evaluator = DEFAULT_EVALUATOR[kind]
    if isinstance(evaluator, str):
        key = evaluator.strip().lower()
        if key not in EVALUATORS:
            from hardware_db.names import did_you_mean

            raise InvalidRequestError(f"unknown evaluator {evaluator!r}.{did_you_mean(evaluator, list(EVALUATORS))} "
                                      f"Allowed: {', '.join(EVALUATORS)}, or a function (model, tokenizer) -> float.")
        evaluator = EVALUATORS[key]()
    elif not hasattr(evaluator, "evaluate") and callable(evaluator):
        evaluator = CallableEvaluator(evaluator)
    if kind not in evaluator.kinds:
        raise UnsupportedError(f"the {evaluator.name} evaluator needs a {' or '.join(evaluator.kinds)} model; "
                               f"this model is a {kind}. Use {DEFAULT_EVALUATOR[kind]!r}.")
    return evaluator


def evaluator_from_spec(spec: dict[str, Any]) -> Evaluator:
    """Rebuild an evaluator from its ``spec()`` (in an isolated process)."""
    spec = dict(spec)
    kind = spec.pop("type")
    if kind == "callable":
        return CallableEvaluator(import_function(spec["function"]), name=spec["name"],
                                 higher_is_better=spec["higher_is_better"])
    cls = EVALUATORS[kind]
    for name in ("corpus", "sentences", "texts", "labels"):
        if isinstance(spec.get(name), list):
            spec[name] = tuple(spec[name])
    return cls(**spec)


__all__ = [
    "AccuracyEvaluator", "CallableEvaluator", "DEFAULT_EVALUATOR", "EVALUATORS", "Evaluator", "FidelityEvaluator",
    "PerplexityEvaluator", "Reference", "Score", "evaluator_from_spec", "get_evaluator", "retained_fraction",
]
