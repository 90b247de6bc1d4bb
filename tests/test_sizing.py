"""what_fits, size_cluster and the roofline speed/cost model."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import hardware_db
from planner import estimate_memory, get_model
from planner.errors import InvalidRequestError, UnsupportedError
from planner.memory.result import GIB
from planner.sizing import CLUSTER_COLUMNS, FITS_COLUMNS, size_cluster, what_fits
from planner.speed import get_speed_engine, prefill_flops, read_bytes, step_terms, usd_per_million_tokens
from planner.memory import weight_bytes
from planner.memory.engines import get_engine
from planner.formats import get_format

MODELS = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen3-30B-A3B", "google/gemma-2-9b", "meta-llama/Llama-3.1-70B"]


@pytest.fixture(scope="module")
def fits_4090():
    return what_fits("RTX 4090", MODELS, ["bf16", "fp8", "nf4", "awq-int4"], context=4096)


def test_columns_are_documented(fits_4090):
    assert list(fits_4090.columns) == list(FITS_COLUMNS)
    assert len(fits_4090) == len(MODELS) * 4


def test_fits_rows_come_first_then_larger_models(fits_4090):
    fits = fits_4090["fits"].tolist()
    assert fits == sorted(fits, reverse=True)
    fitting = fits_4090[fits_4090["fits"]]
    assert fitting["params_b"].tolist() == sorted(fitting["params_b"], reverse=True)


def test_what_fits_agrees_with_estimate_memory(fits_4090):
    row = fits_4090[(fits_4090.model == "meta-llama/Llama-3.1-8B") & (fits_4090.precision == "nf4")].iloc[0]
    e = estimate_memory("meta-llama/Llama-3.1-8B", "nf4", seq_len=4096)
    assert row["safe_gib"] == pytest.approx(e.safe_gib, rel=1e-9)
    assert row["peak_gib"] == pytest.approx(e.peak_allocated_gib, rel=1e-9)
    assert row["fits"] and row["headroom_gib"] == pytest.approx(24 - e.safe_gib)


def test_largest_context_and_batch_are_the_limits_of_safe(fits_4090):
    row = fits_4090[(fits_4090.model == "meta-llama/Llama-3.1-8B") & (fits_4090.precision == "nf4")].iloc[0]
    limit = 24.0
    at = estimate_memory("meta-llama/Llama-3.1-8B", "nf4", seq_len=int(row["max_context"])).safe_gib
    above = estimate_memory("meta-llama/Llama-3.1-8B", "nf4", seq_len=int(row["max_context"]) + 2).safe_gib
    assert at <= limit < above
    b = int(row["max_batch"])
    assert estimate_memory("meta-llama/Llama-3.1-8B", "nf4", seq_len=4096, batch=b).safe_gib <= limit
    assert estimate_memory("meta-llama/Llama-3.1-8B", "nf4", seq_len=4096, batch=b + 1).safe_gib > limit


def test_sliding_window_models_stretch_past_the_window():
    frame = what_fits("H100 SXM", ["google/gemma-2-9b"], ["bf16"], context=2048)
    row = frame.iloc[0]
    assert row["max_context"] == 8192  # capped at the model's max_position_embeddings
    big = what_fits("L4", ["openai/gpt-oss-20b"], ["awq-int4"], context=2048).iloc[0]
    window = get_model("openai/gpt-oss-20b").attention.sliding_window
    assert big["max_context"] > window
    at = estimate_memory("openai/gpt-oss-20b", "awq-int4", seq_len=int(big["max_context"])).safe_gib
    above = estimate_memory("openai/gpt-oss-20b", "awq-int4", seq_len=int(big["max_context"]) + 2).safe_gib
    assert at <= big["usable_gib"] < above


def test_unsupported_format_is_reported_with_the_reason():
    frame = what_fits("A100 80GB", ["meta-llama/Llama-3.1-8B"], ["fp8", "bf16"], engine="vllm")
    fp8 = frame[frame.precision == "fp8"].iloc[0]
    assert fp8["supported"] is False or not fp8["supported"]
    assert not fp8["fits"] and "8.9" in fp8["note"]
    assert frame[frame.precision == "bf16"].iloc[0]["fits"]


def test_capacity_only_gpu_has_unknown_support_and_no_speed():
    frame = what_fits("16GB", ["meta-llama/Llama-3.1-8B"], ["nf4"])
    row = frame.iloc[0]
    assert pd.isna(row["supported"])
    assert row["fits"] and math.isnan(row["decode_tok_s"])


def test_engine_that_cannot_run_a_requested_format_is_rejected_like_estimate():
    # issue 13: a request no row can answer is an error (as in estimate_memory), not "0 of N fit".
    with pytest.raises(UnsupportedError, match="llamacpp"):
        what_fits("RTX 4090", ["meta-llama/Llama-3.1-8B"], ["q4_k_m"], engine="hf")


def test_many_gpus_in_one_call():
    frame = what_fits(["RTX 4090", "H100 SXM", "16GB"], ["meta-llama/Llama-3.1-8B"], ["bf16"])
    assert set(frame["gpu"]) == {"NVIDIA GeForce RTX 4090", "NVIDIA H100 SXM", "Generic 16 GiB GPU"}


def test_bad_what_fits_input():
    with pytest.raises(InvalidRequestError):
        what_fits("RTX 4090", context=0)
    with pytest.raises(InvalidRequestError):
        what_fits([])


def test_size_cluster_70b_bf16_32k():
    frame = size_cluster("meta-llama/Llama-3.1-70B", "bf16", seq_len=32768)
    assert list(frame.columns) == list(CLUSTER_COLUMNS)
    h100 = frame[frame.gpu == "NVIDIA H100 SXM"].iloc[0]
    assert h100["gpus"] == 2 and h100["tp"] == 2 and h100["per_gpu_safe_gib"] <= 80
    # one H100 is not enough: the per-device bound at tp=1 is above 80 GiB
    assert estimate_memory("meta-llama/Llama-3.1-70B", "bf16", seq_len=32768).safe_gib > 80
    assert h100["usd_per_hour"] == pytest.approx(2 * hardware_db.get("H100 SXM").cloud_usd_per_hour)
    assert h100["usd_per_million_tokens"] == pytest.approx(h100["usd_per_hour"] / (h100["decode_tok_s"] * 3600) * 1e6)
    t4 = frame[frame.gpu == "NVIDIA T4"].iloc[0]
    assert not t4["supported"] and "8.0" in t4["note"] and math.isnan(t4["gpus"])


def test_size_cluster_respects_heads_and_node_size():
    spec = get_model("meta-llama/Llama-3.1-70B")
    frame = size_cluster(spec, "bf16", seq_len=4096, gpus=["RTX 3070"])
    row = frame.iloc[0]
    assert row["tp"] <= hardware_db.get("RTX 3070").gpus_per_node
    assert spec.num_heads % row["tp"] == 0
    assert row["pp"] >= 2 and row["per_gpu_safe_gib"] <= 8


def test_decode_speed_is_bandwidth_over_bytes_read():
    spec = get_model("meta-llama/Llama-3.1-8B")
    acc = hardware_db.get("H100 SXM")
    w = weight_bytes(spec, "bf16")
    reads = read_bytes(spec, w)
    # the token embedding is a gather, not a read
    assert reads.at(1) == pytest.approx(w.total - spec.params.embeddings * 2)
    engine = get_speed_engine("vllm")
    bytes_s, _, overhead, total = step_terms(engine, weight_bytes=reads.at(1), linear_flops=1.0, bandwidth_gbps=3350,
                                             peak_tflops=989, mfu=0.5, layers=32)
    assert bytes_s == pytest.approx(reads.at(1) / (3350e9 * engine.bandwidth_efficiency))
    assert total == pytest.approx(bytes_s + overhead)


def test_moe_decode_reads_only_the_routed_experts():
    spec = get_model("Qwen/Qwen3-30B-A3B")
    reads = read_bytes(spec, weight_bytes(spec, "bf16"))
    assert reads.at(1) < 0.2 * weight_bytes(spec, "bf16").total
    assert reads.at(1) < reads.at(8) < reads.at(1024) <= reads.dense + reads.experts


def test_prefill_flops_are_two_per_active_parameter_per_token_plus_attention():
    spec = get_model("meta-llama/Llama-3.1-8B")
    linear = spec.params.total - spec.params.embeddings
    attention = 2 * 2 * 32 * 128 * 1000 * (32 * 1000) / 2
    assert prefill_flops(spec, 1000, 1) == pytest.approx(2 * linear * 1000 + attention)


def test_missing_price_gives_none():
    assert usd_per_million_tokens(None, 100.0) is None
    assert usd_per_million_tokens(3.6, 1000.0) == pytest.approx(1.0)


def test_safe_gib_of_what_fits_is_the_largest_phase(fits_4090):
    e = estimate_memory("Qwen/Qwen3-30B-A3B", "awq-int4", seq_len=4096)
    row = fits_4090[(fits_4090.model == "Qwen/Qwen3-30B-A3B") & (fits_4090.precision == "awq-int4")].iloc[0]
    assert row["safe_gib"] == pytest.approx(max(e.phases_safe_gib.values()), rel=1e-3)
    assert row["safe_gib"] * GIB > 0
