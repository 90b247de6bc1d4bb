"""Memory formulas against hand-computed numbers."""

from __future__ import annotations

import pytest

from planner import estimate_memory, get_model
from planner.memory import kv_bytes_per_token, kv_cache_bytes, weight_bytes
from planner.memory.result import GIB


def test_llama_3_1_8b_bf16_kv_per_token():
    # 32 layers x 2 (K, V) x 8 KV heads x 128 head_dim x 2 bytes
    assert kv_bytes_per_token(get_model("meta-llama/Llama-3.1-8B"), "bf16") == 131_072


def test_gqa_vs_mha_kv():
    # Llama-2-7B is MHA: 32 layers x 2 x 32 heads x 128 x 2 bytes
    assert kv_bytes_per_token(get_model("meta-llama/Llama-2-7b-hf"), "fp16") == 524_288
    # Falcon-7B is MQA: one KV head of 64
    assert kv_bytes_per_token(get_model("tiiuae/falcon-7b"), "bf16") == 32 * 2 * 1 * 64 * 2


def test_mla_caches_the_latent_in_vllm_and_full_heads_in_transformers():
    spec = get_model("deepseek-ai/DeepSeek-V3")
    # latent 512 + RoPE key 64 per layer, 61 layers, bf16
    assert kv_bytes_per_token(spec, "bf16") == 61 * (512 + 64) * 2
    # transformers decompresses: 128 heads x (128 + 64) keys + 128 heads x 128 values
    assert kv_bytes_per_token(spec, "bf16", latent_mla=False) == 61 * (128 * 192 + 128 * 128) * 2


def test_sliding_window_layers_are_capped():
    spec = get_model("openai/gpt-oss-20b")  # 24 layers alternating sliding (128) / full, 8 KV heads x 64
    per_layer = 2 * 8 * 64 * 2
    full, sliding = spec.attention.num_full_layers, spec.attention.num_sliding_layers
    assert (full, sliding) == (12, 12)
    assert kv_cache_bytes(spec, tokens=10_000, kv_dtype="bf16") == per_layer * (12 * 10_000 + 12 * 128)
    gemma = get_model("google/gemma-2-9b")  # every other layer slides over 4096 tokens
    short = kv_cache_bytes(gemma, tokens=4096)
    assert kv_cache_bytes(gemma, tokens=8192) == pytest.approx(short * 1.5)


def test_moe_memory_holds_every_expert_but_reads_the_active_ones():
    spec = get_model("Qwen/Qwen3-30B-A3B")
    w = weight_bytes(spec, "bf16")
    assert w.total == spec.params.total * 2
    assert spec.params.active < spec.params.total / 8


def test_weights_only_bf16_equals_params_times_two():
    spec = get_model("meta-llama/Llama-3.1-8B")
    assert weight_bytes(spec, "bf16").total == spec.params.total * 2
    assert weight_bytes(spec, "fp32").total == spec.params.total * 4


def test_tensor_parallel_shards_weights_and_replicates_norms():
    spec = get_model("meta-llama/Llama-3.1-70B")
    one = weight_bytes(spec, "bf16").total
    eight = weight_bytes(spec, "bf16", tp=8).total
    norms = sum(g.params for g in spec.param_groups if g.kind == "norm") * 2
    assert eight == pytest.approx((one - norms) / 8 + norms)


def test_estimate_peak_is_weights_plus_kv_plus_the_prefill_mlp():
    spec = get_model("Qwen/Qwen3-8B")
    e = estimate_memory(spec, "bf16", prompt_len=4096, new_tokens=0)
    d, f, t = spec.hidden_size, spec.mlp.intermediate_size, 4096
    weights = spec.params.total * 2
    kv = kv_bytes_per_token(spec) * t
    mlp = t * (4 * d + 3 * f) * 2
    workspace = 8.125 * 2**20  # unknown GPU: pre-Hopper cuBLAS workspace as the point value
    assert e.peak_phase == "prefill:mlp"
    assert e.peak_allocated_gib == pytest.approx((weights + kv + mlp + workspace) / GIB)
    assert e.device_total_gib > e.peak_allocated_gib
    assert e.safe_gib >= e.device_total_gib


def test_full_logits_of_old_transformers_dominate_long_prompts():
    last = estimate_memory("Qwen/Qwen2.5-0.5B", "bf16", prompt_len=30720, new_tokens=2048)
    full = estimate_memory("Qwen/Qwen2.5-0.5B", "bf16", prompt_len=30720, new_tokens=2048, hf_logits="full")
    vocab = 151936
    assert full.peak_phase == "prefill:lm_head"
    assert full.breakdown_gib["logits"] == pytest.approx(30720 * vocab * (2 + 4) / GIB)
    assert full.peak_allocated_gib > 5 * last.peak_allocated_gib
