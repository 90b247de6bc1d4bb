"""Classification accuracy on labelled texts.

- A model with a sequence-classification head (its output has 2-D ``logits``): accuracy of the
  argmax against the labels (integers, or names mapped through ``config.label2id``).
- Any other model: leave-one-out 1-nearest-neighbour accuracy of its mean-pooled embeddings, i.e. the
  fraction of texts whose most similar other text has the same label. This measures how well the
  embedding space still separates the classes, without training a head.

Default texts: the 60 shipped sentences with their 6 topic labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from executors.evaluate.base import Reference, Score, fingerprint
from executors.evaluate.embeddings import mean_pooled_embeddings, nearest_neighbours, tokenized_batches
from executors.evaluate.sentences import default_labels, default_sentences
from planner.errors import InvalidRequestError


@dataclass(frozen=True)
class AccuracyEvaluator:
    texts: tuple[str, ...] | None = None
    labels: tuple[str | int, ...] | None = None
    max_length: int = 64
    batch_size: int = 32

    name = "accuracy"
    metric = "classification accuracy"
    higher_is_better = True
    kinds = ("encoder", "causal-lm")

    def __post_init__(self) -> None:
        if (self.texts is None) != (self.labels is None):
            raise InvalidRequestError("accuracy needs both texts and labels (or neither, for the shipped set).")
        if self.texts is not None and len(self.texts) != len(self.labels):
            raise InvalidRequestError(f"accuracy got {len(self.texts)} texts but {len(self.labels)} labels.")

    def data(self) -> tuple[tuple[str, ...], tuple[str | int, ...]]:
        if self.texts is None:
            return default_sentences(), default_labels()
        return tuple(self.texts), tuple(self.labels)

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "texts": list(self.texts) if self.texts is not None else None,
                "labels": list(self.labels) if self.labels is not None else None,
                "max_length": self.max_length, "batch_size": self.batch_size}

    def key(self) -> str:
        texts, labels = self.data()
        return f"{self.name}-{fingerprint([list(texts), list(labels), self.max_length])}"

    def reference(self, model: Any, tokenizer: Any) -> Reference:
        return Reference(value=self.evaluate(model, tokenizer, None).value)

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score:
        from executors._imports import import_torch

        torch = import_torch()
        texts, labels = self.data()
        if _has_classification_head(model):
            predicted = _head_predictions(model, tokenizer, texts, self.max_length, self.batch_size)
            targets = torch.tensor([_label_index(model, label) for label in labels])
            method = "classification head"
        else:
            embeddings = mean_pooled_embeddings(model, tokenizer, texts, max_length=self.max_length,
                                                batch_size=self.batch_size)
            names = sorted(set(map(str, labels)))
            targets = torch.tensor([names.index(str(label)) for label in labels])
            predicted = targets[nearest_neighbours(embeddings)]
            method = "leave-one-out 1-NN on embeddings"
        accuracy = float((predicted == targets).float().mean())
        return Score(value=accuracy, extras={"method": method, "examples": len(texts)})


def _has_classification_head(model: Any) -> bool:
    architectures = getattr(model.config, "architectures", None) or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def _label_index(model: Any, label: str | int) -> int:
    if isinstance(label, int):
        return label
    mapping = getattr(model.config, "label2id", None) or {}
    if label not in mapping:
        raise InvalidRequestError(f"label {label!r} is not one of the model's labels ({', '.join(mapping)}).")
    return int(mapping[label])


def _head_predictions(model: Any, tokenizer: Any, texts: tuple[str, ...], max_length: int, batch_size: int) -> Any:
    from executors._imports import import_torch

    torch = import_torch()
    predictions = []
    with torch.no_grad():
        for batch in tokenized_batches(model, tokenizer, texts, max_length=max_length, batch_size=batch_size):
            predictions.append(model(**batch).logits.argmax(dim=-1).cpu())
    return torch.cat(predictions)
