"""Evaluators on the real models: the tiny LM's perplexity, MiniLM's fidelity/accuracy, cached references."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.exec


@pytest.fixture(scope="module")
def minilm():
    from executors.fixtures import minilm_dir
    from executors.loading import load_model

    return load_model(minilm_dir())


@pytest.fixture(scope="module")
def tiny():
    from executors.loading import load_model
    from tests.exec_helpers import tiny_llm_dir

    info = tiny_llm_dir()
    return info, load_model(info.path)


def test_tiny_llm_fixture_learned_the_corpus(tiny):
    from executors.evaluate import PerplexityEvaluator

    info, loaded = tiny
    assert loaded.kind == "causal-lm" and info.params == 4_000_000
    assert info.initial_validation_perplexity > 0.5 * info.uniform_perplexity  # random init ~ uniform
    # clearly learned something: the test recipe's 40 steps reach ~0.3 x uniform (the benchmark one < 0.15)
    assert info.validation_perplexity < 0.4 * info.uniform_perplexity
    reloaded = PerplexityEvaluator().evaluate(loaded.model, loaded.tokenizer, None).value
    assert reloaded == pytest.approx(info.validation_perplexity, rel=1e-4)  # saved = trained weights


def test_perplexity_budget_and_uniform_model(tiny):
    from executors._imports import import_torch
    from executors.evaluate.perplexity import PerplexityEvaluator, windows_perplexity

    torch = import_torch()
    _, loaded = tiny
    evaluator = PerplexityEvaluator(seq_len=64, max_tokens=640)
    windows = evaluator.windows(loaded.tokenizer)
    assert tuple(windows.shape) == (10, 64)

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bias = torch.nn.Parameter(torch.zeros(2048))

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.bias.expand(*input_ids.shape, 2048)})()

    assert windows_perplexity(Uniform(), windows, 4) == pytest.approx(2048, rel=1e-4)


def test_fidelity_of_the_model_to_itself_is_one(minilm):
    from executors.evaluate import FidelityEvaluator

    evaluator = FidelityEvaluator()
    reference = evaluator.reference(minilm.model, minilm.tokenizer)
    score = evaluator.evaluate(minilm.model, minilm.tokenizer, reference)
    assert tuple(reference.tensors["embeddings"].shape) == (60, 384)
    assert score.value == pytest.approx(1.0, abs=1e-5)
    assert score.extras["nn_agreement"] == 1.0


def test_fidelity_drops_when_weights_are_perturbed(minilm):
    import copy

    from executors._imports import import_torch
    from executors.evaluate import FidelityEvaluator

    torch = import_torch()
    evaluator = FidelityEvaluator()
    reference = evaluator.reference(minilm.model, minilm.tokenizer)
    noisy = copy.deepcopy(minilm.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in noisy.encoder.layer:
            weight = layer.intermediate.dense.weight
            weight.add_(torch.randn(weight.shape, generator=generator) * 0.3 * weight.std())
    score = evaluator.evaluate(noisy, minilm.tokenizer, reference)
    assert 0.2 < score.value < 0.99 and score.extras["min_cosine"] < score.value


def test_accuracy_on_labelled_topics(minilm):
    from executors.evaluate import AccuracyEvaluator

    score = AccuracyEvaluator().evaluate(minilm.model, minilm.tokenizer, None)
    assert score.extras["method"] == "leave-one-out 1-NN on embeddings"
    assert score.value >= 0.85  # 54 of 60 measured: a real sentence encoder separates cooking from finance


def test_reference_is_computed_once_then_cached(tmp_path, monkeypatch):
    from executors.candidate import compute_reference
    from executors.evaluate import FidelityEvaluator
    from executors.evaluate.reference import clear_memory_cache, reference_path
    from executors.fixtures import minilm_dir

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path))
    clear_memory_cache()
    evaluator = FidelityEvaluator(sentences=("a cat sat", "stocks fell", "it rained", "we coded"))
    request = {"model_dir": str(minilm_dir()), "evaluator": evaluator.spec(), "device": "cpu"}
    phases = []
    first = compute_reference(request, phases.append)
    assert not first["cached"] and phases == ["startup", "reference"]
    assert reference_path(minilm_dir(), evaluator).is_file()
    assert first["facts"]["params"] == 22_713_216 and first["facts"]["weight_bytes"] == 90_852_864
    clear_memory_cache()  # the disk copy is enough
    again = compute_reference(request, phases.append)
    assert again["cached"] and again["value"] == 1.0 and len(phases) == 2
    assert math.isclose(again["facts"]["params"], first["facts"]["params"])
