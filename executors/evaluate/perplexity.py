"""Causal-LM perplexity on the validation split of a corpus, over a fixed token budget.

perplexity = exp(mean over predicted tokens of -log p(token | previous tokens)), computed on
consecutive non-overlapping windows of ``seq_len`` tokens (each window scored independently, its first
token is context only), at most ``max_tokens`` tokens (a fixed budget keeps it fast and comparable
between candidates). Lower is better; a model guessing uniformly over V tokens scores V.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from executors.corpus import Corpus, evaluation_windows, load_corpus, token_ids
from executors.evaluate.base import Reference, Score, fingerprint


def windows_perplexity(model: Any, windows: Any, batch_size: int) -> float:
    """exp(mean next-token negative log-likelihood) of ``model`` over the rows of ``windows``."""
    from executors._imports import import_torch

    torch = import_torch()
    device = next(model.parameters()).device
    total_nll = 0.0
    total_tokens = 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            batch = windows[start: start + batch_size].to(device)
            logits = model(input_ids=batch).logits[:, :-1, :].float()
            targets = batch[:, 1:]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                    reduction="sum")
            total_nll += float(nll)
            total_tokens += targets.numel()
    return math.exp(total_nll / total_tokens)


@dataclass(frozen=True)
class PerplexityEvaluator:
    """Perplexity of a causal LM on a corpus's validation split (default corpus: pydoc topics)."""

    corpus: str | tuple[str, ...] | None = None
    seq_len: int = 128
    max_tokens: int = 4096
    batch_size: int = 8
    _loaded: dict = field(default_factory=dict, compare=False, repr=False)

    name = "perplexity"
    metric = "perplexity"
    higher_is_better = False
    kinds = ("causal-lm",)

    def spec(self) -> dict[str, Any]:
        corpus = list(self.corpus) if isinstance(self.corpus, tuple) else self.corpus
        return {"type": self.name, "corpus": corpus, "seq_len": self.seq_len, "max_tokens": self.max_tokens,
                "batch_size": self.batch_size}

    def key(self) -> str:
        spec = self.spec()
        spec.pop("batch_size")  # does not change the value
        return f"{self.name}-{fingerprint(spec)}"

    def load_corpus(self) -> Corpus:
        if "corpus" not in self._loaded:
            source = list(self.corpus) if isinstance(self.corpus, tuple) else self.corpus
            self._loaded["corpus"] = load_corpus(source)
        return self._loaded["corpus"]

    def windows(self, tokenizer: Any) -> Any:
        key = ("windows", getattr(tokenizer, "name_or_path", id(tokenizer)), len(tokenizer))
        if key not in self._loaded:
            ids = token_ids(tokenizer, self.load_corpus().validation)
            self._loaded[key] = evaluation_windows(ids, self.seq_len, self.max_tokens)
        return self._loaded[key]

    def reference(self, model: Any, tokenizer: Any) -> Reference:
        return Reference(value=self.evaluate(model, tokenizer, None).value)

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score:
        windows = self.windows(tokenizer)
        value = windows_perplexity(model, windows, self.batch_size)
        return Score(value=value, extras={"tokens": int(windows.numel()), "windows": int(len(windows))})
