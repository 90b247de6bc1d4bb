"""The text corpus: deterministic 9:1 document split of pydoc topics, text files, lists of strings."""

from __future__ import annotations

import pytest

from executors.corpus import VALIDATION_EVERY, default_corpus, load_corpus, split_documents
from planner.errors import InvalidRequestError


def test_default_corpus_is_pydoc_topics_split_every_tenth_paragraph():
    from pydoc_data import topics

    corpus = default_corpus()
    documents = [p for k in sorted(topics.topics) for p in topics.topics[k].split("\n\n") if p.strip()]
    assert corpus.name == "pydoc_data.topics"
    assert len(corpus.train) + len(corpus.validation) == len(documents)
    assert corpus.validation == tuple(documents[9::10])
    share = corpus.characters["validation"] / sum(corpus.characters.values())
    assert 0.07 < share < 0.13 and corpus.characters["train"] > 380_000
    assert default_corpus() == corpus  # deterministic


def test_text_file_paragraphs_are_documents(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(25)))
    corpus = load_corpus(path)
    assert corpus.validation == ("paragraph 9", "paragraph 19")
    assert len(corpus.train) == 23


def test_list_of_strings_and_errors(tmp_path):
    corpus = load_corpus([f"doc {i}" for i in range(12)] + ["   "])
    assert corpus.validation == ("doc 9",) and len(corpus.train) == 11
    with pytest.raises(InvalidRequestError, match=f"at least {VALIDATION_EVERY}"):
        split_documents(["a", "b"], "tiny")
    with pytest.raises(InvalidRequestError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    with pytest.raises(InvalidRequestError, match="strings only"):
        load_corpus([1, 2, 3])
