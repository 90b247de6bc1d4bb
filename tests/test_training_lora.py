"""LoRA adapter counts and target matching (peft semantics, LitGPT role slices)."""

from __future__ import annotations

import pytest

import planner
from planner.errors import InvalidRequestError
from planner.memory.training.lora import adapter_params, lora_adapters, module_names


@pytest.fixture(scope="module")
def llama():
    return planner.get_model("meta-llama/Llama-3.1-8B")


def test_llama31_8b_rank8_on_q_and_v_is_3407872(llama):
    # 32 layers x 8 x ((4096 + 4096) + (4096 + 1024))
    assert adapter_params(lora_adapters(llama, 8, ["q_proj", "v_proj"])) == 3_407_872


def test_roles_and_module_names_agree_on_unfused_models(llama):
    assert adapter_params(lora_adapters(llama, 8, ["q", "v"])) == 3_407_872


def test_all_linear_excludes_lm_head(llama):
    adapters = lora_adapters(llama, 16, ["all-linear"])
    assert {a.module.rsplit(".", 1)[-1] for a in adapters} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    per_layer = 16 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + 3 * (4096 + 14336))
    assert adapter_params(adapters) == 32 * per_layer == 41_943_040


def test_fused_module_named_gets_one_adapter_and_roles_get_slices():
    phi3 = planner.get_model("microsoft/Phi-3-mini-4k-instruct")  # qkv_proj 3072 -> 9216, 32 layers
    whole = lora_adapters(phi3, 8, ["qkv_proj"])
    assert [a.module for a in whole] == ["layers.*.self_attn.qkv_proj"]
    assert adapter_params(whole) == 32 * 8 * (3072 + 9216)
    sliced = lora_adapters(phi3, 8, ["q", "v"])
    assert adapter_params(sliced) == 32 * 8 * ((3072 + 3072) + (3072 + 3072))
    # naming the module as well keeps only the whole-module adapter
    assert adapter_params(lora_adapters(phi3, 8, ["qkv_proj", "q"])) == adapter_params(whole)


def test_suffix_matching_hits_every_module_with_that_name():
    qwen = planner.get_model("Qwen/Qwen-7B")  # c_proj is both attn.c_proj and mlp.c_proj (peft suffix match)
    modules = {a.module for a in lora_adapters(qwen, 64, ["c_attn", "c_proj", "w1", "w2"])}
    assert modules == {"layers.*.attn.c_attn", "layers.*.attn.c_proj", "layers.*.mlp.c_proj", "layers.*.mlp.w1",
                       "layers.*.mlp.w2"}


@pytest.mark.parametrize("rank", [0, -4, 2.5, True])
def test_rank_must_be_a_positive_integer(llama, rank):
    with pytest.raises(InvalidRequestError, match="rank"):
        lora_adapters(llama, rank, ["q_proj"])


def test_rank_larger_than_the_layer_width_is_refused(llama):
    with pytest.raises(InvalidRequestError, match="k_proj .*at most 1024"):
        lora_adapters(llama, 2048, ["k_proj"])


def test_unknown_target_lists_the_existing_modules(llama):
    with pytest.raises(InvalidRequestError) as error:
        lora_adapters(llama, 8, ["query_key_value"])
    for name in module_names(llama):
        assert name in str(error.value)


def test_empty_target_list_is_refused(llama):
    with pytest.raises(InvalidRequestError, match="at least one target"):
        lora_adapters(llama, 8, [])


def test_default_targets_are_the_query_and_value_projections_by_the_models_own_names():
    from planner.memory.training.lora import default_targets

    expected = {"meta-llama/Llama-3.1-8B": ("q_proj", "v_proj"), "openai-community/gpt2": ("c_attn",),
                "tiiuae/falcon-7b": ("query_key_value",), "microsoft/Phi-3-mini-4k-instruct": ("qkv_proj",),
                "google-bert/bert-large-uncased": ("query", "value"),
                "deepseek-ai/DeepSeek-V3": ("q_b_proj", "kv_b_proj")}
    for name, targets in expected.items():
        assert default_targets(planner.get_model(name)) == targets, name
