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
REMOTE_CODE = [e for e in registry_entries() if e.instantiate_as == "none"]


def _meta_count(entry) -> int:
    import torch
    import transformers

    source = entry.config
    if registry_spec(entry.name).model_type != source["model_type"]:  # a multimodal wrapper read as its text model
        source = source["text_config"]
    raw = {k: v for k, v in source.items() if k not in ("auto_map", "quantization_config")}
    if entry.transformers_model_type:
        raw["model_type"] = entry.transformers_model_type
    config = transformers.AutoConfig.for_model(**raw)
    auto = {"causal_lm": transformers.AutoModelForCausalLM, "auto_model": transformers.AutoModel,
            "seq2seq": transformers.AutoModelForSeq2SeqLM}[entry.instantiate_as]
    with torch.device("meta"):
        model = auto.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("entry", INSTANTIABLE, ids=lambda e: e.name)
def test_parameter_total_equals_transformers_meta_count(entry):
    spec = registry_spec(entry.name)
    expected = _meta_count(entry)
    if entry.meta_count_excludes == "lm_head":  # transformers ties a head the checkpoint stores untied
        expected += sum(g.params for g in spec.param_groups if g.name == "lm_head")
    assert spec.params.total == expected
    assert spec.params.total == entry.params_total_exact


def test_entries_transformers_cannot_build_keep_their_published_count():
    for entry in REMOTE_CODE:
        assert entry.params_total_exact is None, entry.name
        assert "remote" in entry.notes.lower() or "trust_remote_code" in entry.notes, entry.name
        assert registry_spec(entry.name).params.total > 0


_REMOTE_CODE_TYPES = {"qwen", "internlm2", "baichuan", "minicpm", "mimo", "orion", "deepseek", "kimi_k2"}


@pytest.mark.parametrize("model_type", sorted(set(_PROFILES) - _REMOTE_CODE_TYPES))
def test_tie_word_embeddings_default_matches_transformers(model_type):
    import transformers

    config = transformers.AutoConfig.for_model(model_type)
    assert bool(config.tie_word_embeddings) == _PROFILES[model_type]["tie"]
