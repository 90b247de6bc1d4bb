"""The calibration-set model configs (benchmarks/data) parse, and fitplan's parameter totals equal
transformers' meta-device counts for every model_type transformers ships (phi, gpt_neox, qwen2, t5,
llama); Qwen-1 is remote code and is checked against its published size instead."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from planner import get_model
from planner.models.hf_config import _PROFILES

DATA = json.loads((Path(__file__).parents[1] / "benchmarks" / "data" / "calibration_models.json").read_text())
MODELS = DATA["models"]


def _meta_count(entry) -> int:
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**entry["config"])
    auto = {"causal_lm": transformers.AutoModelForCausalLM, "seq2seq": transformers.AutoModelForSeq2SeqLM}
    with torch.device("meta"):
        model = auto[entry["instantiate_as"]].from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.exec
@pytest.mark.parametrize("entry", [m for m in MODELS if m["instantiate_as"] != "none"], ids=lambda m: m["name"])
def test_parameter_total_equals_transformers_meta_count(entry):
    assert get_model(entry["config"], name=entry["name"]).params.total == _meta_count(entry)


@pytest.mark.exec
@pytest.mark.parametrize("model_type", ["phi", "gpt_neox"])
def test_new_profiles_tie_default_matches_transformers(model_type):
    import transformers

    assert bool(transformers.AutoConfig.for_model(model_type).tie_word_embeddings) == _PROFILES[model_type]["tie"]


@pytest.mark.parametrize(("name", "published_b"), [("Qwen/Qwen-1.8B-Chat", 1.84), ("Qwen/Qwen-14B-Chat", 14.2),
                                                   ("Qwen/Qwen-72B-Chat", 72.3)])
def test_qwen1_totals_match_the_published_sizes(name, published_b):
    entry = next(m for m in MODELS if m["name"] == name)
    assert get_model(entry["config"], name=name).params.total / 1e9 == pytest.approx(published_b, rel=0.005)


def test_every_registry_name_resolves():
    for registry_name in DATA["registry_names"].values():
        assert get_model(registry_name).name == registry_name
