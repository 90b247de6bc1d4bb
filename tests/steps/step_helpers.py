"""Helpers shared by the compression-step tests (tiny random Llama, deterministic text batches)."""

from __future__ import annotations

import torch
import transformers

LLAMA = dict(model_type="llama", hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=704, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)


def corpus_text() -> str:
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
