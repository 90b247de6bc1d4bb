"""The sentence set shipped with fitplan (``data/sentences.tsv``): 60 sentences in 6 labelled topics."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def labelled_sentences() -> tuple[tuple[str, str], ...]:
    """``(label, sentence)`` pairs in file order."""
    text = resources.files("executors.evaluate").joinpath("data/sentences.tsv").read_text(encoding="utf-8")
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            label, sentence = line.split("\t", 1)
            pairs.append((label, sentence))
    return tuple(pairs)


def default_sentences() -> tuple[str, ...]:
    return tuple(sentence for _, sentence in labelled_sentences())


def default_labels() -> tuple[str, ...]:
    return tuple(label for label, _ in labelled_sentences())
