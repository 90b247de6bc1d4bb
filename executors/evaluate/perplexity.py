"""Causal-LM perplexity on the validation split of a corpus, over a fixed token budget.

perplexity = exp(mean over predicted tokens of -log p(token | previous tokens)), computed on
consecutive non-overlapping windows of ``seq_len`` tokens (each window scored independently, its first
token is context only), at most ``max_tokens`` tokens (a fixed budget keeps it fast and comparable
between candidates). Lower is better; a model guessing uniformly over V tokens scores V.

The text is the validation split of ``corpus`` (default: the pydoc topics), or all of the user's
``data`` (a text file's paragraphs, the text field of a JSONL / CSV / saved dataset:
:func:`executors.datafiles.read_texts`). Files are keyed by their content's fingerprint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from executors.corpus import Corpus, evaluation_windows, load_corpus, token_ids
from executors.datafiles import data_fingerprint, read_texts
from executors.evaluate.base import Reference, Score, fingerprint
from planner.errors import InvalidRequestError


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
    """Perplexity of a causal LM on a corpus's validation split (default corpus: pydoc topics) or on
    all of the user's ``data`` file."""

    corpus: str | tuple[str, ...] | None = None
    seq_len: int = 128
    max_tokens: int = 4096
    batch_size: int = 8
    data: str | None = None
    text_field: str | None = None
    _loaded: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.data is not None and self.corpus is not None:
            raise InvalidRequestError("perplexity takes either data (the user's evaluation text) or corpus "
                                      "(its validation split), not both.")

    name = "perplexity"
    metric = "perplexity"
    higher_is_better = False
    kinds = ("causal-lm",)

    def spec(self) -> dict[str, Any]:
        corpus = list(self.corpus) if isinstance(self.corpus, tuple) else self.corpus
        return {"type": self.name, "corpus": corpus, "seq_len": self.seq_len, "max_tokens": self.max_tokens,
                "batch_size": self.batch_size, "data": self.data, "text_field": self.text_field}

    def key(self) -> str:
        spec = self.spec()
        spec.pop("batch_size")  # does not change the value
        for name in ("data", "corpus"):  # a file is keyed by its content, not its path
            if isinstance(spec[name], str):
                spec[name] = "sha256:" + data_fingerprint(spec[name])
        if spec["data"] is None:
            del spec["data"], spec["text_field"]  # keeps the keys of references cached before user data existed
        return f"{self.name}-{fingerprint(spec)}"

    def documents(self) -> tuple[str, ...]:
        """The evaluated documents: all of ``data``, or the validation split of the corpus."""
        if self.data is not None:
            return read_texts(self.data, unit="paragraph", text_field=self.text_field).texts
        return self.load_corpus().validation

    def check_data(self, tokenizer: Any) -> None:
        """A clear error when the text is shorter than one window of ``seq_len`` tokens."""
        ids = token_ids(tokenizer, self.documents())
        if len(ids) < self.seq_len:
            where = f"data {self.data!r}" if self.data is not None else "the corpus's validation split"
            raise InvalidRequestError(f"{where} has {len(ids)} tokens under this model's tokenizer; perplexity "
                                      f"needs at least one window of {self.seq_len} tokens. Use more text.")

    def load_corpus(self) -> Corpus:
        if "corpus" not in self._loaded:
            source = list(self.corpus) if isinstance(self.corpus, tuple) else self.corpus
            self._loaded["corpus"] = load_corpus(source)
        return self._loaded["corpus"]

    def windows(self, tokenizer: Any) -> Any:
        key = ("windows", getattr(tokenizer, "name_or_path", id(tokenizer)), len(tokenizer))
        if key not in self._loaded:
            ids = token_ids(tokenizer, self.documents())
            self._loaded[key] = evaluation_windows(ids, self.seq_len, self.max_tokens)
        return self._loaded[key]

    def reference(self, model: Any, tokenizer: Any) -> Reference:
        return Reference(value=self.evaluate(model, tokenizer, None).value)

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score:
        windows = self.windows(tokenizer)
        value = windows_perplexity(model, windows, self.batch_size)
        return Score(value=value, extras={"tokens": int(windows.numel()), "windows": int(len(windows))})
