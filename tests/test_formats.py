"""The format registry: lookups, errors, and exact storage against measured byte counts."""

from __future__ import annotations

import pytest

from planner.errors import FitplanError, InvalidRequestError, UnknownFormatError
from planner.formats import get_format, get_kv_dtype, list_formats
from planner.formats.storage import gguf_bytes, group_storage, linear_bytes
from planner.models import get_model

ISSUE_FORMATS = ["fp32", "fp16", "bf16", "fp8", "fp8-block", "int8", "nf4", "fp4", "nf4-dq", "fp4-dq", "gptq-int4",
                 "gptq-int8", "awq-int4", "gguf-f16", "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m",
                 "gguf-q4_0", "gguf-q3_k_m", "gguf-q2_k", "gguf-iq4_xs", "nvfp4", "mxfp4",
                 "hqq-int8", "hqq-int4", "hqq-int3", "hqq-int2"]  # HQQ: issue 12


def test_registry_has_every_format_of_the_issue():
    assert sorted(f.name for f in list_formats()) == sorted(ISSUE_FORMATS)


@pytest.mark.parametrize(("alias", "canonical"), [
    ("q4_k_m", "gguf-q4_k_m"), ("Q4_K_M", "gguf-q4_k_m"), ("llm.int8", "int8"), ("bfloat16", "bf16"),
    ("fp8_block", "fp8-block"), ("AWQ", "awq-int4"), ("nf4 dq", "nf4-dq"),
])
def test_aliases_resolve(alias, canonical):
    assert get_format(alias).name == canonical


def test_int4_is_ambiguous_and_lists_the_candidates():
    with pytest.raises(InvalidRequestError) as info:
        get_format("int4")
    message = str(info.value)
    for name in ("gptq-int4", "awq-int4", "nf4"):
        assert name in message


def test_unknown_format_suggests_close_names():
    with pytest.raises(UnknownFormatError) as info:
        get_format("bf61")
    assert "Did you mean" in str(info.value) and "bf16" in str(info.value)
    assert isinstance(info.value, FitplanError)


def test_unknown_kv_dtype_is_an_error():
    assert get_kv_dtype("q8_0").name == "int8"
    with pytest.raises(UnknownFormatError):
        get_kv_dtype("fp9")


@pytest.mark.parametrize(("fmt", "expected"), [("int8", 4_210_689), ("nf4", 2_359_441), ("nf4-dq", 2_164_972)])
def test_bitsandbytes_bytes_match_the_measured_state_dict(fmt, expected):
    # 1024 -> 4096 Linear without bias, measured with bitsandbytes 0.50.2 (ENVIRONMENT.md).
    assert linear_bytes(get_format(fmt), 4096, 1024) == expected


def test_gptq_and_awq_group_overhead():
    # g128: 4-bit packed (0.5 B) + fp16 scale and 4-bit zero per group (2.5 B / 128) [+ g_idx int32 per input].
    assert linear_bytes(get_format("awq-int4"), 4096, 4096) == 4096 * 4096 * (0.5 + 2.5 / 128)
    assert linear_bytes(get_format("gptq-int4"), 4096, 4096) == 4096 * 4096 * (0.5 + 2.5 / 128) + 4096 * 4
    assert linear_bytes(get_format("gptq-int8"), 4096, 4096) == 4096 * 4096 * (1 + 3 / 128) + 4096 * 4


def test_microscaling_and_fp8_block_bits_per_weight():
    n = 4096 * 4096
    assert linear_bytes(get_format("nvfp4"), 4096, 4096) * 8 / n == pytest.approx(4.5, abs=1e-5)
    assert linear_bytes(get_format("mxfp4"), 4096, 4096) * 8 / n == pytest.approx(4.25)
    assert linear_bytes(get_format("fp8-block"), 4096, 4096) == n + 32 * 32 * 4


def test_gguf_block_sizes_and_fallback():
    assert gguf_bytes("Q4_K", 1, 4096) == (16 * 144, "Q4_K")
    assert gguf_bytes("Q8_0", 2, 64) == (2 * 2 * 34, "Q8_0")
    # 2880 (gpt-oss) is not a multiple of 256: llama.cpp falls back from Q4_K to Q5_0.
    assert gguf_bytes("Q4_K", 1, 2880)[1] == "Q5_0"


def test_q4_k_m_llama_3_1_70b_file_size_matches_the_published_file():
    spec = get_model("meta-llama/Llama-3.1-70B")
    fmt = get_format("gguf-q4_k_m")
    total = sum(group_storage(spec, fmt, g).bytes for g in spec.param_groups)
    assert total / 1e9 == pytest.approx(42.52, rel=0.01)  # runpod/docs PR #839: 42.52 GB, 4.82 bpw
    assert total * 8 / spec.params.total == pytest.approx(4.82, abs=0.01)


def test_bnb_keeps_embeddings_and_lm_head_in_16_bit():
    spec = get_model("meta-llama/Llama-2-7b-hf")
    fmt = get_format("nf4")
    by_name = {g.name: group_storage(spec, fmt, g) for g in spec.param_groups}
    assert not by_name["lm_head"].quantized and by_name["lm_head"].bytes == 32000 * 4096 * 2
    assert not by_name["embed_tokens"].quantized
    assert by_name["layers.*.mlp.down_proj"].quantized
    assert group_storage(spec, fmt, next(g for g in spec.param_groups if g.name == "lm_head"),
                         quantize_lm_head=True).quantized


def test_checkpoint_modules_to_not_convert_are_respected():
    spec = get_model("openai/gpt-oss-20b")  # mxfp4 experts; self_attn, router, embeddings, lm_head bf16
    fmt = get_format("mxfp4")
    stored = {g.name: group_storage(spec, fmt, g) for g in spec.param_groups}
    assert not stored["layers.*.self_attn.q_proj"].quantized
    assert stored["layers.*.mlp.experts.*.down_proj"].quantized


def test_gguf_quantizes_biased_linears_and_keeps_the_bias_in_f32():
    spec = get_model("Qwen/Qwen2.5-14B")  # q/k/v projections have biases
    fmt = get_format("gguf-q6_k")
    q = next(g for g in spec.param_groups if g.name == "layers.*.self_attn.q_proj")
    stored = group_storage(spec, fmt, q)
    assert stored.quantized and stored.stored_as == "48xQ6_K"
    assert stored.bytes == 48 * (5120 * (5120 // 256) * 210 + 5120 * 4)
