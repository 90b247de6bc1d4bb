"""The planner's parameter accounting equals transformers' own count for every registry model.

transformers builds each model on the meta device (no memory, no weights) and we compare
``sum(p.numel() for p in model.parameters())`` with ``ModelSpec.params.total``. The config-class
defaults fitplan assumes for omitted keys are checked against transformers' config classes too.
"""

from __future__ import annotations

import pytest

from planner.models import registry_entries
from planner.models.hf_config import _PROFILES
from planner.models.resolve import registry_spec

pytestmark = pytest.mark.exec

INSTANTIABLE = [e for e in registry_entries() if e.instantiate_as != "none"]


def _meta_count(entry) -> int:
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**{k: v for k, v in entry.config.items()
                                                  if k not in ("auto_map", "quantization_config")})
    auto = {"causal_lm": transformers.AutoModelForCausalLM, "auto_model": transformers.AutoModel,
            "seq2seq": transformers.AutoModelForSeq2SeqLM}[entry.instantiate_as]
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("entry", INSTANTIABLE, ids=lambda e: e.name)
def test_parameter_total_equals_transformers_meta_count(entry):
    spec = registry_spec(entry.name)
    assert spec.params.total == _meta_count(entry)
    assert spec.params.total == entry.params_total_exact


@pytest.mark.parametrize("model_type", sorted(set(_PROFILES) - {"qwen"}))
def test_tie_word_embeddings_default_matches_transformers(model_type):
    import transformers

    config = transformers.AutoConfig.for_model(model_type)
    assert bool(config.tie_word_embeddings) == _PROFILES[model_type]["tie"]
