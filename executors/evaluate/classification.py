"""Classification accuracy on labelled texts.

- A model with a sequence-classification head (its output has 2-D ``logits``): accuracy of the
  argmax against the labels (integers, or names mapped through ``config.label2id``).
- Any other model: leave-one-out 1-nearest-neighbour accuracy of its mean-pooled embeddings, i.e. the
  fraction of texts whose most similar other text has the same label. This measures how well the
  embedding space still separates the classes, without training a head.

Default texts: the 60 shipped sentences with their 6 topic labels; or the user's ``data``: a CSV/TSV,
JSONL or saved dataset with a text and a label field (:func:`executors.datafiles.read_texts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from executors.datafiles import read_texts
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
    data: str | None = None
    text_field: str | None = None
    label_field: str | None = None

    name = "accuracy"
    metric = "classification accuracy"
    higher_is_better = True
    kinds = ("encoder", "causal-lm")

    def __post_init__(self) -> None:
        if self.data is not None and self.texts is not None:
            raise InvalidRequestError("accuracy takes either data (a file) or texts and labels, not both.")
        if (self.texts is None) != (self.labels is None):
            raise InvalidRequestError("accuracy needs both texts and labels (or neither, for the shipped set).")
        if self.texts is not None and len(self.texts) != len(self.labels):
            raise InvalidRequestError(f"accuracy got {len(self.texts)} texts but {len(self.labels)} labels.")

    def examples(self) -> tuple[tuple[str, ...], tuple[str | int, ...]]:
        """(texts, labels): the user's data file, the given lists, or the shipped set."""
        if self.data is not None:
            loaded = read_texts(self.data, labels=True, text_field=self.text_field, label_field=self.label_field)
            return loaded.texts, loaded.labels or ()
        if self.texts is None:
            return default_sentences(), default_labels()
        return tuple(self.texts), tuple(self.labels)

    def check_data(self, tokenizer: Any = None) -> None:
        texts, labels = self.examples()
        classes = len(set(map(str, labels)))
        if len(texts) < 2 or classes < 2:
            raise InvalidRequestError(f"accuracy needs at least 2 labelled examples of at least 2 classes; got "
                                      f"{len(texts)} example(s) of {classes} class(es).")

    def spec(self) -> dict[str, Any]:
        return {"type": self.name, "texts": list(self.texts) if self.texts is not None else None,
                "labels": list(self.labels) if self.labels is not None else None,
                "max_length": self.max_length, "batch_size": self.batch_size, "data": self.data,
                "text_field": self.text_field, "label_field": self.label_field}

    def key(self) -> str:
        texts, labels = self.examples()
        return f"{self.name}-{fingerprint([list(texts), list(labels), self.max_length])}"

    def reference(self, model: Any, tokenizer: Any) -> Reference:
        return Reference(value=self.evaluate(model, tokenizer, None).value)

    def evaluate(self, model: Any, tokenizer: Any, reference: Reference | None) -> Score:
        from executors._imports import import_torch

        torch = import_torch()
        texts, labels = self.examples()
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
