"""What users paste: hub ids of variants, checkpoint formats as the default precision, unknown model_types."""

from __future__ import annotations

import pytest

from planner import estimate_memory
from planner.cli import main
from planner.errors import InvalidConfigError, OfflineError, UnknownModelError
from planner.models import get_model
from planner.models.checkpoint import checkpoint_format, default_precision, format_of_quantization_config
from planner.models.resolve import registry_spec
from planner.models.variants import parse_variant


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache


@pytest.mark.parametrize("name, core, fmt", [
    ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b", None),
    ("Qwen/Qwen2.5-7B-Instruct-AWQ", "qwen2.5-7b", "awq-int4"),
    ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8", "qwen2.5-7b", "gptq-int8"),
    ("Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4", "qwen2.5-7b", "gptq-int4"),
    ("TheBloke/Llama-2-7B-Chat-GGUF", "llama-2-7b", "gguf-q4_k_m"),
    ("bartowski/Llama-3.2-3B-Instruct-Q8_0-GGUF", "llama-3.2-3b", "gguf-q8_0"),
    ("unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit", "llama-3.1-8b", "nf4"),
    ("meta-llama/Meta-Llama-3-8B-Instruct", "llama-3-8b", None),
    ("google/gemma-2-9b-it", "gemma-2-9b", None),
    ("neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8", "llama-3.1-70b", "fp8"),
    ("microsoft/Phi-3-mini-128k-instruct", "phi-3-mini-128k", None),
    ("lmstudio-community/gpt-oss-20b-MXFP4-GGUF", "gpt-oss-20b", None),  # no GGUF-MXFP4 format: no guess
])
def test_parse_variant_keeps_the_architecture_words_and_reads_the_format(name, core, fmt):
    variant = parse_variant(name)
    assert (variant.core, variant.implied_format) == (core, fmt)


def test_instruct_hub_id_resolves_offline_to_the_registry_entry_with_a_note():
    spec = get_model("Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert spec.source == "registry"
    assert spec.params.total == registry_spec(spec.name).params.total
    assert any("read as the registry model" in note and "AWQ" in note for note in spec.assumptions)
    assert default_precision(spec) == "awq-int4"
    estimate = estimate_memory("Qwen/Qwen2.5-7B-Instruct-AWQ")
    assert estimate.precision == "awq-int4"
    assert any("read as the registry model" in w for w in estimate.warnings)


def test_distinct_products_with_other_shapes_are_not_merged():
    # 4k and 128k Phi-3 differ (rope scaling): the core keeps the context word.
    assert get_model("microsoft/Phi-3-mini-128k-instruct").name == "microsoft/Phi-3-mini-128k-instruct"
    with pytest.raises(OfflineError, match="Did you mean"):
        get_model("NousResearch/Hermes-3-Llama-3.1-8B")


def test_unknown_hub_id_offline_suggests_registry_names():
    with pytest.raises(OfflineError) as error:
        get_model("Qwen/Qwen2.5-7B-Instruct-Turbo")
    assert "Did you mean 'Qwen/Qwen2.5-7B'" in str(error.value)
    assert "HF_HUB_OFFLINE" in str(error.value)


def test_unknown_plain_name_suggests_by_core():
    with pytest.raises(UnknownModelError, match="Did you mean .*Qwen2.5-7B"):
        get_model("qwen2.5-7b-instruct-turbo")


@pytest.mark.parametrize("qc, fmt", [
    ({"quant_method": "mxfp4"}, "mxfp4"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8-block"),
    ({"quant_method": "fp8"}, "fp8"),
    ({"quant_method": "gptq", "bits": 4}, "gptq-int4"),
    ({"quant_method": "gptq", "bits": 8}, "gptq-int8"),
    ({"quant_method": "gptq", "bits": 3}, None),
    ({"quant_method": "awq", "bits": 4}, "awq-int4"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
      "bnb_4bit_use_double_quant": True}, "nf4-dq"),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "int8"),
    ({"quant_method": "compressed-tensors"}, None),
    (None, None),
])
def test_quantization_config_maps_to_a_format(qc, fmt):
    assert format_of_quantization_config(qc) == fmt


def test_default_precision_is_the_checkpoint_format():
    assert checkpoint_format(get_model("openai/gpt-oss-20b")) == "mxfp4"
    assert default_precision(get_model("deepseek-ai/DeepSeek-V3")) == "fp8-block"
    assert default_precision(get_model("meta-llama/Llama-3.1-8B")) == "bf16"
    estimate = estimate_memory("openai/gpt-oss-20b", gpu="RTX 4090")
    assert estimate.precision == "mxfp4"
    assert estimate.fit is not None and estimate.fit.fits is True
    assert "mxfp4" in estimate.assumptions["precision_source"]
    assert estimate_memory("openai/gpt-oss-20b", "bf16").precision == "bf16"  # a chosen precision wins


def test_cli_estimate_names_the_checkpoint_format_in_the_title(capsys):
    assert main(["estimate", "openai/gpt-oss-20b", "--gpu", "RTX 4090"]) == 0
    out = capsys.readouterr().out
    assert "mxfp4 (the checkpoint's own format)" in out
    assert ": fits:" in out


def test_cli_estimate_pasted_hub_id_works_offline(capsys):
    assert main(["estimate", "Qwen/Qwen2.5-7B-Instruct"]) == 0
    out = capsys.readouterr().out
    assert "read as the registry model Qwen/Qwen2.5-7B" in out


def test_gguf_repo_with_the_default_engine_says_what_to_pass(capsys):
    assert main(["estimate", "TheBloke/Llama-2-7B-Chat-GGUF"]) == 2
    err = capsys.readouterr().err
    assert "default precision" in err and "--engine llamacpp" in err and "Traceback" not in err
    assert main(["estimate", "TheBloke/Llama-2-7B-Chat-GGUF", "--engine", "llamacpp"]) == 0


def test_fits_lists_a_model_in_its_checkpoint_format():
    from planner.sizing import what_fits

    frame = what_fits("RTX 4090", models=["openai/gpt-oss-20b", "meta-llama/Llama-3.1-8B"])
    rows = frame[frame["precision"] == "mxfp4"].set_index("model")
    assert bool(rows.loc["openai/gpt-oss-20b", "fits"])
    assert not bool(rows.loc["meta-llama/Llama-3.1-8B", "fits"])
    assert "ship" in rows.loc["meta-llama/Llama-3.1-8B", "note"]
    # precisions given explicitly: only those
    assert set(what_fits("RTX 4090", models=["openai/gpt-oss-20b"], precisions=["bf16"])["precision"]) == {"bf16"}


LLAMA_FIELDS = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 512, "vocab_size": 1000, "rms_norm_eps": 1e-6, "tie_word_embeddings": False}


def test_unknown_model_type_with_standard_fields_is_read_as_a_generic_decoder():
    generic = get_model({"model_type": "brand_new_lm", **LLAMA_FIELDS})
    llama = get_model({"model_type": "llama", **LLAMA_FIELDS})
    assert generic.params.total == llama.params.total
    assert len(generic.assumptions) == 1
    assert "'brand_new_lm' has no dedicated reader" in generic.assumptions[0]
    assert "generic pre-norm decoder" in generic.assumptions[0]
    estimate = estimate_memory({"model_type": "brand_new_lm", **LLAMA_FIELDS})
    assert any("no dedicated reader" in w for w in estimate.warnings)


def test_unknown_encoder_is_read_as_bert():
    config = {"model_type": "new_bert", "architectures": ["NewBertForMaskedLM"], "hidden_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256, "vocab_size": 1000,
              "max_position_embeddings": 512, "type_vocab_size": 2}
    generic = get_model(config)
    assert generic.architecture == "encoder"
    assert generic.params.total == get_model({**config, "model_type": "bert"}).params.total


@pytest.mark.parametrize("extra, what", [
    ({"num_local_experts": 8, "num_experts_per_tok": 2}, "mixture-of-experts"),
    ({"kv_lora_rank": 512}, "multi-head latent attention"),
    ({"alibi": True}, "ALiBi"),
])
def test_unknown_model_type_with_a_special_structure_is_refused_with_the_reason(extra, what):
    with pytest.raises(InvalidConfigError, match=what):
        get_model({"model_type": "brand_new_lm", **LLAMA_FIELDS, **extra})


def test_unknown_model_type_without_the_standard_fields_names_the_missing_key():
    config = {k: v for k, v in LLAMA_FIELDS.items() if k != "intermediate_size"}
    with pytest.raises(InvalidConfigError, match="intermediate_size"):
        get_model({"model_type": "brand_new_lm", **config})
