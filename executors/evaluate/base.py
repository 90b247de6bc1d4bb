"""What every evaluator provides, and the small helpers they share.

An evaluator scores a model on a fixed task. It is a frozen dataclass with:

- ``name`` / ``metric`` / ``higher_is_better`` / ``kinds`` (model kinds it accepts: 'causal-lm', 'encoder');
- ``spec()``: a JSON-able dict that rebuilds it in an isolated process (:func:`evaluator_from_spec`);
- ``key()``: what the baseline's reference outputs are cached under (changes when the task changes);
- ``reference(model, tokenizer) -> Reference``: run once on the uncompressed model (cached);
- ``evaluate(model, tokenizer, reference) -> Score``: the compressed model's score.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Reference:
    """The uncompressed model's outputs on the evaluation task: its score and any tensors a
    comparison needs (e.g. the reference embeddings for fidelity)."""

    value: float
    tensors: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, float] = field(default_factory=dict)  # e.g. the model's parameters and state-dict bytes


@dataclass
class Score:
    value: float
    extras: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    name: str
    metric: str
    higher_is_better: bool
    kinds: tuple[str, ...]

    def spec(self) -> dict[str, Any]: ...

    def key(self) -> str: ...

    def reference(self, model: Any, tokenizer: Any) -> Reference: ...

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score: ...


def fingerprint(payload: Any) -> str:
    """Short stable hash of a JSON-able payload (cache keys)."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def retained_fraction(compressed: float, baseline: float, higher_is_better: bool) -> float:
    """Quality kept by the compressed model: compressed / baseline when higher is better, baseline /
    compressed when lower is better (perplexity), so 1.0 = no loss and 0.5 = "half as good" either way."""
    if higher_is_better:
        return compressed / baseline if baseline else float("nan")
    return baseline / compressed if compressed else float("nan")
