"""ModelSpec: registry coverage, architecture facts and component accounting on hand-checked cases."""

from __future__ import annotations

import pytest

from planner import get_model, list_models
from planner.errors import InvalidConfigError
from planner.models import ModelSpec, registry_entries


def test_registry_has_at_least_40_models_with_sources():
    entries = registry_entries()
    assert len(entries) >= 40
    for entry in entries:
        assert entry.source, entry.name
        assert entry.config.get("model_type"), entry.name


def test_registry_covers_the_families_the_issue_names():
    types = {spec.model_type for spec in list_models()}
    for required in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "gemma2", "gemma3_text",
                     "phi3", "deepseek_v3", "gpt2", "opt", "falcon", "gpt_bigcode", "bert", "t5"):
        assert required in types


def test_llama_3_1_8b_components_by_hand():
    spec = get_model("meta-llama/Llama-3.1-8B")
    h, layers, vocab, ffn, kv = 4096, 32, 128256, 14336, 8 * 128
    p = spec.params
    assert p.embeddings == vocab * h
    assert p.lm_head == vocab * h  # untied
    assert p.attention == layers * (h * h + 2 * h * kv + h * h)
    assert p.mlp == layers * 3 * h * ffn
    assert p.norms == (2 * layers + 1) * h
    assert p.total == 8_030_261_248 == p.active
    assert spec.attention.kind == "gqa"


def test_tied_embeddings_have_no_lm_head():
    spec = get_model("Llama-3.2-1B")
    assert spec.tie_word_embeddings and spec.params.lm_head == 0
    assert spec.params.total == 1_235_814_400


def test_mqa_gqa_mha_and_mla_kinds():
    assert get_model("tiiuae/falcon-7b").attention.kind == "mqa"
    assert get_model("Llama-2-7b").attention.kind == "mha"
    assert get_model("Mistral-7B").attention.kind == "gqa"
    mla = get_model("deepseek-ai/DeepSeek-V3").attention
    assert mla.kind == "mla" and mla.mla.kv_lora_rank == 512 and mla.mla.qk_rope_head_dim == 64


def test_explicit_head_dim_is_kept():
    # Gemma 3 4B: 8 heads x 256 = 2048 != hidden 2560.
    spec = get_model("google/gemma-3-4b-pt")
    assert spec.head_dim == 256 and spec.hidden_size == 2560


def test_moe_total_versus_active():
    spec = get_model("Mixtral-8x7B")
    moe = spec.moe
    assert (moe.num_experts, moe.experts_per_token) == (8, 2)
    per_expert = 3 * 4096 * 14336
    assert spec.params.experts == 32 * 8 * per_expert
    assert spec.params.active == spec.params.total - 32 * 6 * per_expert


def test_deepseek_dense_first_layers_and_shared_experts():
    spec = get_model("deepseek-ai/DeepSeek-V3")
    assert spec.moe.moe_layers[0] == 3 and len(spec.moe.moe_layers) == 58
    assert spec.params.mlp == 3 * 3 * 7168 * 18432  # three dense layers
    assert spec.params.shared_experts == 58 * 3 * 7168 * 2048


def test_sliding_window_layer_types():
    gemma2 = get_model("google/gemma-2-9b").attention
    assert gemma2.layer_types[:2] == ("sliding_attention", "full_attention")
    assert gemma2.num_sliding_layers == gemma2.num_full_layers == 21
    gemma3 = get_model("google/gemma-3-27b-pt").attention
    assert gemma3.layer_types[:6] == ("sliding_attention",) * 5 + ("full_attention",)
    oss = get_model("openai/gpt-oss-20b").attention
    assert oss.sliding_window == 128 and oss.num_sliding_layers == 12
    assert get_model("Llama-3.1-8B").attention.sliding_window is None


def test_encoder_and_encoder_decoder():
    bert = get_model("bert-base-uncased")
    assert bert.architecture == "encoder" and bert.params.lm_head == 0 and bert.pooler
    t5 = get_model("t5-base")
    assert t5.architecture == "encoder-decoder"
    assert (t5.num_encoder_layers, t5.num_layers, t5.total_layers) == (12, 12, 24)


def test_fused_modules_keep_their_real_names():
    phi = {g.leaf_name for g in get_model("microsoft/phi-4").linear_groups()}
    assert {"qkv_proj", "gate_up_proj", "o_proj", "down_proj"} <= phi
    gpt2 = {g.leaf_name for g in get_model("gpt2").linear_groups()}
    assert {"c_attn", "c_proj", "c_fc"} <= gpt2


def test_layer_params_sum_to_the_layer_components():
    spec = get_model("Qwen/Qwen3-30B-A3B")
    per_layer = spec.layer_params()
    assert len(per_layer) == 48 and len(set(per_layer)) == 1
    outside = spec.params.embeddings + spec.params.lm_head + spec.hidden_size  # final norm
    assert sum(per_layer) + outside == spec.params.total


def test_qwen1_remote_code_model_is_counted_from_its_config():
    # No transformers class exists; the registry notes quote the exact-structure proxy count.
    assert get_model("Qwen/Qwen-7B").params.total == 7_721_324_544


def test_config_without_model_type_is_rejected():
    with pytest.raises(InvalidConfigError, match="model_type"):
        ModelSpec.from_config({"hidden_size": 64})


def test_unsupported_model_type_suggests_a_close_one():
    with pytest.raises(InvalidConfigError, match="Did you mean 'llama'"):
        ModelSpec.from_config({"model_type": "lama", "hidden_size": 64})


def test_missing_and_invalid_fields_name_the_key():
    base = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 128, "vocab_size": 100}
    with pytest.raises(InvalidConfigError, match="num_hidden_layers"):
        ModelSpec.from_config({k: v for k, v in base.items() if k != "num_hidden_layers"})
    with pytest.raises(InvalidConfigError, match="hidden_size .* positive integer"):
        ModelSpec.from_config({**base, "hidden_size": -64})
    with pytest.raises(InvalidConfigError, match="not a multiple"):
        ModelSpec.from_config({**base, "num_key_value_heads": 3})


def test_small_custom_config_counts_by_hand():
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100}
    spec = ModelSpec.from_config(config, name="tiny")
    attention = 64 * 64 + 2 * 64 * 32 + 64 * 64
    mlp = 3 * 64 * 128
    assert spec.params.total == 100 * 64 * 2 + 2 * (attention + mlp + 2 * 64) + 64
