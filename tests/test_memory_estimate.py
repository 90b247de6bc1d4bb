"""estimate_memory: totals, phases, engines, multi-GPU, support checks and bad input."""

from __future__ import annotations

import pytest

from planner import estimate_memory, get_model
from planner.errors import FitplanError, InvalidRequestError, UnknownFormatError, UnsupportedError
from planner.memory import kv_bytes_per_token, weight_bytes
from planner.memory.result import BREAKDOWN_KEYS, GIB


def test_three_totals_are_ordered_and_breakdown_sums_to_the_device_total():
    e = estimate_memory("meta-llama/Llama-3.1-8B", "bf16", prompt_len=1000, new_tokens=1000, gpu="H100 SXM")
    assert e.peak_allocated_gib < e.device_total_gib <= e.safe_gib
    assert sum(e.breakdown_gib.values()) == pytest.approx(e.device_total_gib)
    assert set(e.breakdown_gib) <= set(BREAKDOWN_KEYS)
    allocated = sum(t.gib for t in e.terms if t.counted_in == "allocated")
    assert allocated == pytest.approx(e.peak_allocated_gib)
    assert e.fit.fits is True and e.fit.usable_gib == 80
    assert all(t.formula and t.source for t in e.terms)


def test_short_generation_peaks_at_the_end_and_long_prompts_at_the_prefill():
    short = estimate_memory("Qwen/Qwen3-8B", "bf16", prompt_len=1, new_tokens=2048)
    long = estimate_memory("Qwen/Qwen3-8B", "bf16", prompt_len=30720, new_tokens=2048)
    assert short.peak_phase == "decode"
    assert long.peak_phase == "prefill:mlp"


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B", "google/gemma-2-9b", "Qwen/Qwen3-30B-A3B",
                                   "openai/gpt-oss-20b", "deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct"])
def test_more_context_never_needs_less_memory(model):
    previous = None
    for seq_len in (1, 128, 1024, 4096, 8192, 16384, 32768):
        e = estimate_memory(model, "bf16", seq_len=seq_len)
        if previous is not None:
            assert e.peak_allocated_gib >= previous.peak_allocated_gib
            assert e.safe_gib >= previous.safe_gib
        previous = e


def test_more_batch_never_needs_less_memory():
    sizes = [estimate_memory("meta-llama/Llama-3.1-8B", "nf4", batch=b, seq_len=2048).safe_gib for b in (1, 2, 8, 32)]
    assert sizes == sorted(sizes)


def test_fp8_on_an_a100_is_refused_with_the_reason():
    with pytest.raises(UnsupportedError) as info:
        estimate_memory("meta-llama/Llama-3.1-8B", "fp8", engine="vllm", gpu="A100 80GB")
    message = str(info.value)
    assert "8.9" in message and "8.0" in message


def test_gguf_is_not_run_by_transformers():
    with pytest.raises(UnsupportedError, match="llamacpp"):
        estimate_memory("meta-llama/Llama-3.1-8B", "q4_k_m", engine="hf")


def test_unknown_precision_suggests_a_name():
    with pytest.raises(UnknownFormatError, match="bf16"):
        estimate_memory("meta-llama/Llama-3.1-8B", "bf61")


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"batch": 0}, "batch must be at least 1"),
    ({"batch": -3}, "batch must be at least 1"),
    ({"seq_len": 0}, "seq_len must be at least 1"),
    ({"seq_len": 10**9}, "absurdly large"),
    ({"batch": 2.5}, "whole number"),
    ({"gpus": 0}, "gpus must be at least 1"),
    ({"new_tokens": 5}, "needs prompt_len"),
    ({"seq_len": 10, "prompt_len": 4, "new_tokens": 4}, "must equal"),
    ({"gpus": 3, "engine": "vllm"}, "does not divide the 32 attention heads"),
    ({"attention": "magic"}, "invalid inference option"),
    ({"flash": True}, "invalid inference option"),
])
def test_bad_sizes_and_options_are_clear_errors(kwargs, fragment):
    with pytest.raises(InvalidRequestError, match=fragment):
        estimate_memory("meta-llama/Llama-3.1-8B", "bf16", **kwargs)


def test_context_beyond_the_model_maximum_is_a_warning():
    e = estimate_memory("meta-llama/Llama-2-7b-hf", "bf16", seq_len=8192)
    assert e.warnings and "max_position_embeddings" in e.warnings[0]
    assert not estimate_memory("meta-llama/Llama-2-7b-hf", "bf16", seq_len=4096).warnings


def test_unknown_mode_is_rejected_with_a_suggestion():
    with pytest.raises(FitplanError, match="Did you mean 'lora'") as error:
        estimate_memory("meta-llama/Llama-3.1-8B", "bf16", mode="lorra")
    assert "full, lora, qlora, freeze" in str(error.value)


def test_tensor_parallel_splits_weights_and_kv_and_adds_nccl():
    one = estimate_memory("meta-llama/Llama-3.1-70B", "bf16", engine="vllm", seq_len=8192)
    four = estimate_memory("meta-llama/Llama-3.1-70B", "bf16", engine="vllm", seq_len=8192, gpus=4)
    w1 = one.breakdown_gib["weights_unquantized"]
    assert four.breakdown_gib["weights_unquantized"] == pytest.approx(w1 / 4, rel=0.01)
    assert four.breakdown_gib["kv_cache"] == pytest.approx(one.breakdown_gib["kv_cache"] / 4, rel=0.01)
    assert four.breakdown_gib["communication_buffers"] == pytest.approx(392e6 / GIB)
    assert four.total_all_devices_gib == pytest.approx(4 * four.peak_allocated_gib)


def test_pipeline_split_holds_a_share_of_the_layers():
    spec = get_model("meta-llama/Llama-3.1-70B")
    two = weight_bytes(spec, "bf16", pp=2).total
    one = weight_bytes(spec, "bf16").total
    assert one / 2 < two < one / 2 + spec.params.lm_head * 2


def test_vllm_reports_the_kv_pool_on_a_gpu():
    e = estimate_memory("meta-llama/Llama-3.1-8B", "bf16", engine="vllm", seq_len=8192, gpu="H100 SXM")
    per_token = kv_bytes_per_token(get_model("meta-llama/Llama-3.1-8B"))
    pool = e.kv_pool.kv_pool_gib * GIB
    assert e.kv_pool.kv_cache_tokens == int(pool // per_token)
    assert e.kv_pool.max_concurrent_sequences == e.kv_pool.kv_cache_tokens // 8192
    assert e.safe_gib == pytest.approx(e.phases_safe_gib["serving"], rel=1e-3)


def test_llamacpp_q4_k_m_weights_match_the_file_size():
    e = estimate_memory("meta-llama/Llama-3.1-70B", "q4_k_m", engine="llamacpp", seq_len=4096)
    assert e.breakdown_gib["weights_quantized"] * GIB / 1e9 == pytest.approx(42.52, rel=0.01)


def test_legacy_tuple_cache_doubles_the_cache_at_decode():
    dynamic = estimate_memory("Qwen/Qwen-7B", "bf16", prompt_len=1, new_tokens=4096)
    legacy = estimate_memory("Qwen/Qwen-7B", "bf16", prompt_len=1, new_tokens=4096, hf_cache="legacy")
    kv = kv_bytes_per_token(get_model("Qwen/Qwen-7B")) * 4097 / GIB
    assert legacy.breakdown_gib["kv_cache"] == pytest.approx(2 * kv, rel=1e-6)
    assert dynamic.breakdown_gib["kv_cache"] < 1.01 * kv + 0.1


def test_errors_are_fitplan_errors():
    with pytest.raises(FitplanError):
        estimate_memory("no-such-model-xyz", "bf16")


def test_local_config_dict_is_accepted():
    config = {"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 704, "vocab_size": 1000}
    e = estimate_memory(config, "bf16", seq_len=64)
    assert e.params_total == get_model(config).params.total
    assert e.peak_allocated_gib > e.params_total * 2 / GIB
