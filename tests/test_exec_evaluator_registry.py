"""Evaluator lookup, specs that rebuild them in a child process, and quality-retained arithmetic."""

from __future__ import annotations

import pytest

from executors.evaluate import (
    AccuracyEvaluator,
    CallableEvaluator,
    FidelityEvaluator,
    PerplexityEvaluator,
    evaluator_from_spec,
    get_evaluator,
    retained_fraction,
)
from executors.evaluate.sentences import default_labels, default_sentences
from planner.errors import InvalidRequestError, UnsupportedError
from tests.exec_helpers import count_bnb_modules


def test_defaults_by_model_kind():
    assert isinstance(get_evaluator(None, "causal-lm"), PerplexityEvaluator)
    assert isinstance(get_evaluator(None, "encoder"), FidelityEvaluator)
    assert isinstance(get_evaluator("Accuracy", "encoder"), AccuracyEvaluator)


def test_errors_name_the_choices():
    with pytest.raises(InvalidRequestError, match="Did you mean 'perplexity'"):
        get_evaluator("perplexty", "causal-lm")
    with pytest.raises(UnsupportedError, match="perplexity evaluator needs a causal-lm model; this model is a "
                                               "encoder. Use 'fidelity'"):
        get_evaluator("perplexity", "encoder")


@pytest.mark.parametrize("evaluator", [
    PerplexityEvaluator(seq_len=64, max_tokens=1024), FidelityEvaluator(sentences=("a b", "c d")),
    AccuracyEvaluator(texts=("x", "y"), labels=("p", "q")), CallableEvaluator(count_bnb_modules, name="bnb"),
])
def test_specs_round_trip(evaluator):
    rebuilt = evaluator_from_spec(evaluator.spec())
    assert rebuilt.spec() == evaluator.spec() and rebuilt.key() == evaluator.key()


def test_cache_key_ignores_batch_size_but_not_the_task():
    assert PerplexityEvaluator(batch_size=2).key() == PerplexityEvaluator(batch_size=16).key()
    assert PerplexityEvaluator(seq_len=64).key() != PerplexityEvaluator().key()
    assert FidelityEvaluator().key() != FidelityEvaluator(sentences=("only one",)).key()


def test_lambdas_cannot_go_to_a_child_process():
    with pytest.raises(InvalidRequestError, match="not a lambda"):
        CallableEvaluator(lambda model, tokenizer: 1.0).spec()


def test_shipped_sentence_set():
    sentences, labels = default_sentences(), default_labels()
    assert len(sentences) == len(labels) == 60 and len(set(labels)) == 6 and len(set(sentences)) == 60


def test_accuracy_needs_matching_texts_and_labels():
    with pytest.raises(InvalidRequestError, match="both texts and labels"):
        AccuracyEvaluator(texts=("a",))
    with pytest.raises(InvalidRequestError, match="2 texts but 1 labels"):
        AccuracyEvaluator(texts=("a", "b"), labels=("x",))


def test_retained_fraction_direction():
    assert retained_fraction(0.9, 1.0, True) == pytest.approx(0.9)
    assert retained_fraction(20.0, 10.0, False) == pytest.approx(0.5)  # perplexity doubled: half as good
