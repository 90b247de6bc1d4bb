"""Embedding fidelity: how close the compressed model's sentence embeddings stay to the original's.

fidelity = mean over sentences of cos(e_compressed, e_original), mean-pooled embeddings
(:mod:`executors.evaluate.embeddings`) on a fixed sentence set (default: the 60 shipped sentences; or
the user's ``data``: one sentence per line of a text file, or the text field of a JSONL / CSV /
saved dataset, :func:`executors.datafiles.read_texts`).
1.0 = identical directions. Also reported: nearest-neighbour agreement, the fraction of sentences
whose most similar other sentence is the same under both models (what a retrieval user notices).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from executors.datafiles import read_texts
from executors.evaluate.base import Reference, Score, fingerprint
from executors.evaluate.embeddings import mean_pooled_embeddings, nearest_neighbours
from executors.evaluate.sentences import default_sentences
from planner.errors import InvalidRequestError

MIN_SENTENCES = 2  # nearest-neighbour agreement compares each sentence with the others


@dataclass(frozen=True)
class FidelityEvaluator:
    sentences: tuple[str, ...] | None = None
    max_length: int = 64
    batch_size: int = 32
    data: str | None = None
    text_field: str | None = None

    name = "fidelity"
    metric = "mean cosine to the uncompressed model"
    higher_is_better = True
    kinds = ("encoder", "causal-lm")

    def __post_init__(self) -> None:
        if self.data is not None and self.sentences is not None:
            raise InvalidRequestError("fidelity takes either data (a file) or sentences (a list), not both.")

    @property
    def texts(self) -> tuple[str, ...]:
        if self.data is not None:
            return read_texts(self.data, unit="line", text_field=self.text_field).texts
        return tuple(self.sentences) if self.sentences is not None else default_sentences()

    def check_data(self, tokenizer: object = None) -> None:
        texts = self.texts
        if len(texts) < MIN_SENTENCES:
            raise InvalidRequestError(f"fidelity needs at least {MIN_SENTENCES} sentences (nearest-neighbour "
                                      f"agreement compares each with the others); got {len(texts)}.")

    def spec(self) -> dict[str, Any]:
        sentences = list(self.sentences) if self.sentences is not None else None
        return {"type": self.name, "sentences": sentences, "max_length": self.max_length,
                "batch_size": self.batch_size, "data": self.data, "text_field": self.text_field}

    def key(self) -> str:
        return f"{self.name}-{fingerprint([list(self.texts), self.max_length])}"

    def embed(self, model: Any, tokenizer: Any) -> Any:
        return mean_pooled_embeddings(model, tokenizer, self.texts, max_length=self.max_length,
                                      batch_size=self.batch_size)

    def reference(self, model: Any, tokenizer: Any) -> Reference:
        return Reference(value=1.0, tensors={"embeddings": self.embed(model, tokenizer)})

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score:
        if reference is None:
            raise ValueError("fidelity compares with the uncompressed model's embeddings: a reference is required.")
        original = reference.tensors["embeddings"]
        compressed = self.embed(model, tokenizer)
        cosines = (compressed * original).sum(dim=1)
        agreement = (nearest_neighbours(compressed) == nearest_neighbours(original)).float().mean()
        return Score(value=float(cosines.mean()),
                     extras={"min_cosine": float(cosines.min()), "nn_agreement": float(agreement),
                             "sentences": len(self.texts)})
