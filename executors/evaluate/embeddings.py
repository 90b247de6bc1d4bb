"""Sentence embeddings of any transformer: mean of the last hidden states over the real tokens.

This is the pooling of sentence-transformers' all-MiniLM-L6-v2 (``1_Pooling/config.json``:
``pooling_mode_mean_tokens``), applied to the raw model output, so an encoder and a causal LM are
compared the same way. Embeddings are L2-normalised float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


def tokenized_batches(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int,
                      batch_size: int) -> Iterator[Any]:
    """Padded, truncated batches of ``texts`` on the model's device."""
    device = next(model.parameters()).device
    for start in range(0, len(texts), batch_size):
        yield tokenizer(list(texts[start: start + batch_size]), padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt").to(device)


def mean_pooled_embeddings(model: Any, tokenizer: Any, sentences: Sequence[str], *, max_length: int = 64,
                           batch_size: int = 32) -> Any:
    from executors._imports import import_torch

    torch = import_torch()
    rows = []
    with torch.no_grad():
        for batch in tokenized_batches(model, tokenizer, sentences, max_length=max_length, batch_size=batch_size):
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           output_hidden_states=True)
            hidden = output.hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(rows)


def nearest_neighbours(embeddings: Any) -> Any:
    """Index of each row's most similar other row (cosine; rows are normalised)."""
    similarity = embeddings @ embeddings.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(dim=1)
