"""transformers generate() options with sourced behaviours: the release (legacy caches, full-prompt fp32
logits) and static / pre-allocated caches (StaticCache, AutoAWQ fused modules)."""

from __future__ import annotations

import pytest

from planner import estimate_memory, get_model
from planner.errors import InvalidRequestError
from planner.memory.engines import hf_version_defaults
from planner.memory.result import GIB

LLAMA = "meta-llama/Llama-2-7b-hf"
KV_PER_TOKEN = 2 * 32 * 4096 * 2  # K and V, 32 layers, 4096 wide, bf16


def _kv(estimate) -> float:
    return sum(t.gib for t in estimate.terms if t.key == "kv_cache")


def test_default_stays_the_current_stack():
    estimate = estimate_memory(LLAMA, "bf16", batch=4, prompt_len=256, new_tokens=256)
    assert estimate.assumptions["hf_cache"] == "dynamic" and estimate.assumptions["logits"] == "last"


@pytest.mark.parametrize("version,cache,logits", [("4.35.2", "legacy", "full"), ("4.38", "dynamic", "full"),
                                                  ("4.45", "dynamic", "last"), ("4.51.3", "dynamic", "last")])
def test_release_implies_cache_and_logits(version, cache, logits):
    estimate = estimate_memory(LLAMA, "bf16", batch=4, prompt_len=256, new_tokens=256, transformers_version=version)
    assert (estimate.assumptions["hf_cache"], estimate.assumptions["logits"]) == (cache, logits)


def test_legacy_release_holds_two_caches_at_decode():
    new = estimate_memory(LLAMA, "bf16", batch=8, prompt_len=512, new_tokens=512)
    old = estimate_memory(LLAMA, "bf16", batch=8, prompt_len=512, new_tokens=512, transformers_version="4.30")
    cache = 8 * 1024 * KV_PER_TOKEN / GIB
    assert old.phases_gib["decode"] - new.phases_gib["decode"] == pytest.approx(
        cache - 8 * 1024 * KV_PER_TOKEN / 2 / 32 / GIB, rel=1e-6)  # a whole cache instead of one layer's K copy


def test_explicit_option_wins_over_release():
    estimate = estimate_memory(LLAMA, "bf16", prompt_len=64, new_tokens=8, transformers_version="4.30",
                               hf_logits="last")
    assert estimate.assumptions["logits"] == "last" and estimate.assumptions["hf_cache"] == "legacy"


def test_autoawq_fused_cache_is_allocated_for_max_seq_len_at_the_batch():
    estimate = estimate_memory(LLAMA, "awq-int4", batch=4, prompt_len=100, new_tokens=28, hf_cache="static",
                               cache_len=2048)
    assert _kv(estimate) == pytest.approx(4 * 2048 * KV_PER_TOKEN / GIB, rel=1e-6)  # fp16 K/V
    short = estimate_memory(LLAMA, "awq-int4", batch=4, prompt_len=100, new_tokens=28)
    assert estimate.peak_allocated_gib > short.peak_allocated_gib + 3.5


def test_static_cache_without_length_covers_prompt_and_new_tokens_from_the_prefill_on():
    estimate = estimate_memory(LLAMA, "bf16", batch=2, prompt_len=300, new_tokens=700, hf_cache="static")
    prefill = [t for t in estimate.terms if t.key == "kv_cache"]
    assert estimate.peak_phase.startswith("prefill")
    assert sum(t.gib for t in prefill) == pytest.approx(2 * 1000 * KV_PER_TOKEN / GIB, rel=1e-6)


@pytest.mark.parametrize("options,match", [
    ({"cache_len": 4096}, "hf_cache='static'"),
    ({"hf_cache": "static", "cache_len": 10}, "shorter than prompt"),
    ({"transformers_version": "four"}, "transformers_version"),
])
def test_bad_generate_options_get_one_clear_error(options, match):
    with pytest.raises(InvalidRequestError, match=match):
        estimate_memory(LLAMA, "bf16", prompt_len=64, new_tokens=8, **options)


def test_transformers_version_is_an_hf_option():
    with pytest.raises(InvalidRequestError, match="engine 'hf'"):
        estimate_memory(get_model(LLAMA), "q4_k_m", engine="llamacpp", seq_len=512, transformers_version="4.30")


def test_version_rules_carry_sources():
    implied = hf_version_defaults("4.30")
    assert set(implied) == {"hf_cache", "hf_logits"}
    assert all("transformers" in source for _, source in implied.values())
    assert hf_version_defaults("5.0") == {}
