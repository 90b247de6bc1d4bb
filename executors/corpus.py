"""Text for training, calibration and perplexity: the default corpus and fixed-length token batches.

The default corpus is CPython's ``pydoc_data.topics`` (the text of ``help('topics')``: 79 topics,
~465,000 characters of English prose and Python code, shipped with every CPython, so it works offline).
Its documents are the paragraphs (separated by blank lines) of the topics in topic-name order; every
``VALIDATION_EVERY``-th one (index % 10 == 9) goes to the validation split, the rest to training.
Splitting paragraphs rather than whole topics keeps the validation split near 10 % of the text (whole
topics vary from 200 to 40,000 characters). The split is a pure function of the text, so every run
on every machine sees the same documents.

The user's calibration/distillation data (``--calib-data``) is split the same way: a text file's
paragraphs (its lines, when it has fewer than ``VALIDATION_EVERY`` paragraphs), the text field of a
JSONL / CSV / saved dataset (:func:`executors.datafiles.read_texts`), or each string of a list.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError

VALIDATION_EVERY = 10
DEFAULT_CORPUS_NAME = "pydoc_data.topics"


@dataclass(frozen=True)
class Corpus:
    """A named text corpus split into training and validation documents."""

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]

    @property
    def characters(self) -> dict[str, int]:
        return {"train": sum(map(len, self.train)), "validation": sum(map(len, self.validation))}


def split_documents(documents: Sequence[str], name: str) -> Corpus:
    """Deterministic split: document ``i`` goes to validation when ``i % VALIDATION_EVERY == 9``."""
    documents = [d for d in documents if d.strip()]
    if len(documents) < VALIDATION_EVERY:
        raise InvalidRequestError(
            f"corpus {name!r} has {len(documents)} non-empty documents; at least {VALIDATION_EVERY} are needed "
            f"to hold one out for validation (documents are a file's paragraphs or lines, or its records).")
    train = tuple(d for i, d in enumerate(documents) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1)
    validation = tuple(d for i, d in enumerate(documents) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1)
    return Corpus(name=name, train=train, validation=validation)


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def default_corpus() -> Corpus:
    """CPython's pydoc topics: paragraphs in topic-name order, split 9:1."""
    from pydoc_data import topics

    documents = [p for key in sorted(topics.topics) for p in paragraphs(topics.topics[key])]
    return split_documents(documents, DEFAULT_CORPUS_NAME)


def load_corpus(source: str | os.PathLike | Sequence[str] | Corpus | None = None) -> Corpus:
    """The default corpus (``None``), a text file (paragraphs = documents) or a list of strings."""
    if source is None:
        return default_corpus()
    if isinstance(source, Corpus):
        return source
    if isinstance(source, (str, os.PathLike)):
        from executors.datafiles import read_texts

        path = Path(source).expanduser()
        if not path.exists():
            raise InvalidRequestError(f"corpus {str(source)!r} does not exist; pass a UTF-8 text, JSONL or CSV "
                                      f"file, a saved datasets directory, a list of strings, or nothing for the "
                                      f"default corpus ({DEFAULT_CORPUS_NAME}).")
        documents = read_texts(path, unit="paragraph").texts
        if len(documents) < VALIDATION_EVERY and path.is_file():
            lines = read_texts(path, unit="line").texts
            documents = lines if len(lines) > len(documents) else documents
        return split_documents(documents, str(path))
    documents = list(source)
    if not all(isinstance(d, str) for d in documents):
        raise InvalidRequestError("a corpus given as a sequence must hold strings only.")
    return split_documents(documents, f"{len(documents)} strings")


def token_ids(tokenizer: Any, documents: Sequence[str]) -> Any:
    """All documents tokenised and concatenated into one 1-D LongTensor, EOS between documents.

    No special tokens are added inside documents; the separator is the tokenizer's EOS token (or
    SEP for encoders), so windows that cross a document boundary see a real boundary token.
    """
    from executors._imports import import_torch

    torch = import_torch()
    separator = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    ids: list[int] = []
    for document in documents:
        ids.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
        if separator is not None:
            ids.append(separator)
    return torch.tensor(ids, dtype=torch.long)


def evaluation_windows(ids: Any, seq_len: int, max_tokens: int) -> Any:
    """Consecutive non-overlapping windows ``(n, seq_len)`` from the start of ``ids``, at most
    ``max_tokens`` tokens in total (a fixed budget makes perplexity fast and comparable)."""
    count = min(len(ids) // seq_len, max_tokens // seq_len)
    if count < 1:
        raise InvalidRequestError(f"the evaluation text has {len(ids)} tokens, fewer than one window of "
                                  f"{seq_len}; use a longer corpus or a shorter sequence length.")
    return ids[: count * seq_len].view(count, seq_len)


class RandomWindows:
    """Deterministic endless stream of random training windows: ``RandomWindows(ids, seed)(batch, seq)``.

    Calling it twice with the same arguments yields the same sequence (distillation resumes from a
    checkpoint by skipping the batches it already consumed), matching
    :data:`executors.steps.context.BatchSource`.
    """

    def __init__(self, ids: Any, seed: int = 0) -> None:
        self.ids = ids
        self.seed = seed

    def __call__(self, batch_size: int, seq_len: int) -> Iterator[Any]:
        from executors._imports import import_torch

        torch = import_torch()
        if len(self.ids) <= seq_len + 1:
            raise InvalidRequestError(f"the training text has {len(self.ids)} tokens, too few for windows of "
                                      f"{seq_len}.")
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            starts = torch.randint(0, len(self.ids) - seq_len, (batch_size,), generator=generator)
            yield torch.stack([self.ids[s: s + seq_len] for s in starts.tolist()])
