"""Evaluators: how good a (compressed) model still is.

- ``perplexity`` (:class:`PerplexityEvaluator`): causal LMs, lower is better;
- ``fidelity`` (:class:`FidelityEvaluator`): mean cosine of sentence embeddings to the uncompressed
  model, plus nearest-neighbour agreement; the default for encoders;
- ``accuracy`` (:class:`AccuracyEvaluator`): classification accuracy on labelled texts;
- any function ``fn(model, tokenizer) -> float`` (:class:`CallableEvaluator`).

The three built-in evaluators also take the user's data (``data=PATH``: text, JSONL, CSV/TSV or a
saved ``datasets`` directory, read by :mod:`executors.datafiles`). The uncompressed model's reference
outputs are computed once and cached (:mod:`.reference`), keyed by the data's content fingerprint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
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


def get_evaluator(evaluator: EvaluatorLike, kind: str, data: str | os.PathLike | None = None) -> Evaluator:
    """An evaluator from a name, a function or an evaluator object; ``None`` = the default for ``kind``.

    ``data``: the user's evaluation data (a path) for a built-in evaluator; it is read and checked here
    (missing, unreadable, empty or too small: InvalidRequestError), before any work.
    """
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
    if data is not None:
        evaluator = _with_data(evaluator, data)
    if kind not in evaluator.kinds:
        raise UnsupportedError(f"the {evaluator.name} evaluator needs a {' or '.join(evaluator.kinds)} model; "
                               f"this model is a {kind}. Use {DEFAULT_EVALUATOR[kind]!r}.")
    return evaluator


def _with_data(evaluator: Evaluator, data: str | os.PathLike) -> Evaluator:
    fields = {f.name for f in dataclasses.fields(evaluator)} if dataclasses.is_dataclass(evaluator) else set()
    if "data" not in fields:
        raise InvalidRequestError(f"evaluation data is for the built-in evaluators ({', '.join(EVALUATORS)}); the "
                                  f"{evaluator.name} evaluator reads its own data.")
    if evaluator.data is not None and Path(evaluator.data) != Path(data):
        raise InvalidRequestError(f"the {evaluator.name} evaluator already has data {evaluator.data!r}; pass "
                                  f"data only once.")
    return dataclasses.replace(evaluator, data=str(Path(data).expanduser().resolve()))


def check_evaluation_data(evaluator: Evaluator, model_dir: str | os.PathLike | None = None) -> None:
    """Read the evaluator's data and check it is enough (perplexity tokenizes it with the model's
    tokenizer: at least one window). Raises InvalidRequestError; a no-op without user data."""
    if getattr(evaluator, "data", None) is None:
        return
    if not isinstance(evaluator, PerplexityEvaluator):
        evaluator.check_data()
        return
    evaluator.documents()  # file problems first, without loading a tokenizer
    if model_dir is not None:
        from executors._imports import import_transformers

        evaluator.check_data(import_transformers().AutoTokenizer.from_pretrained(str(model_dir)))


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
    "PerplexityEvaluator", "Reference", "Score", "check_evaluation_data", "evaluator_from_spec", "get_evaluator",
    "retained_fraction",
]
