"""planner.estimate: memory + speed + cost from one function, and the step-time formula behind it."""

from __future__ import annotations

import json
import numpy as np
import pytest

import hardware_db
import planner
from planner.cli import main
from planner.errors import FitplanError
from planner.speed import get_speed_engine, step_terms
from planner.speed.model import moe_experts_run


@pytest.fixture(scope="module")
def awq_4090():
    return planner.estimate("meta-llama/Llama-3.1-8B", "awq-int4", gpu="RTX 4090", engine="vllm", prompt_len=512,
                            new_tokens=256)


def test_estimate_returns_memory_speed_and_cost(awq_4090):
    e = awq_4090
    assert e.memory.precision == "awq-int4" and e.memory.fit.fits
    s = e.speed
    assert s.decode_tokens_per_s == pytest.approx(1 / s.decode.seconds)
    assert s.per_token_latency_ms == pytest.approx(s.decode.seconds * 1e3)
    assert s.ttft_ms == pytest.approx(s.prefill.seconds * 1e3)
    assert s.prefill_tokens_per_s == pytest.approx(512 / s.prefill.seconds)
    assert s.generation_s == pytest.approx(s.prefill.seconds + 256 * s.decode.seconds)
    assert s.decode_context == 512 + 128
    # the step is max(bytes, compute) + overhead, and batch-1 decode of an 8B model is memory-bound
    d = s.decode
    i = d.inputs
    assert d.bytes_seconds == pytest.approx((i["weight_bytes"] + i["kv_bytes"]) / (1008e9 * i["bandwidth_efficiency"]),
                                            rel=1e-3) or i["kernel_factor"] != 1
    assert d.seconds >= max(d.bytes_seconds, d.compute_seconds) + d.overhead_seconds - 1e-12
    assert d.seconds <= d.bytes_seconds + d.compute_seconds + d.overhead_seconds + 1e-12
    assert d.bound in ("memory", "overhead") and s.prefill.bound == "compute"
    acc = hardware_db.get("RTX 4090")
    assert e.cost.usd_per_hour == acc.cloud_usd_per_hour
    assert e.cost.usd_per_million_output_tokens == pytest.approx(acc.cloud_usd_per_hour / (s.decode_tokens_per_s * 3600) * 1e6)
    assert e.cost.usd_per_million_input_tokens < e.cost.usd_per_million_output_tokens


def test_estimate_without_gpu_has_memory_only():
    e = planner.estimate("Qwen/Qwen2.5-0.5B", seq_len=1024)
    assert e.speed is None and e.cost is None and "no GPU" in e.speed_unknown
    assert e.memory.safe_gib > 0


def test_gpu_without_bandwidth_gives_no_speed_and_says_why():
    e = planner.estimate("Qwen/Qwen2.5-0.5B", gpu="16GB", seq_len=1024)
    assert e.speed is None and "bandwidth" in e.speed_unknown
    assert e.cost.usd_per_million_output_tokens is None


def test_missing_price_is_none_not_invented():
    e = planner.estimate("Qwen/Qwen2.5-0.5B", gpu="RTX 3090", seq_len=1024)
    assert hardware_db.get("RTX 3090").cloud_usd_per_hour is None
    assert e.speed.decode_tokens_per_s > 0 and e.cost.usd_per_hour is None
    assert e.cost.usd_per_million_output_tokens is None and e.cost.usd_per_million_input_tokens is None


def test_unknown_engine_is_an_error_with_a_close_match():
    with pytest.raises(FitplanError, match="vllm"):
        planner.estimate("Qwen/Qwen2.5-0.5B", gpu="RTX 4090", engine="vlm")


def test_absurd_batch_is_an_error():
    with pytest.raises(FitplanError, match="batch"):
        planner.estimate("Qwen/Qwen2.5-0.5B", gpu="RTX 4090", batch=10**9)


def test_speed_only_engine_uses_its_memory_engine():
    e = planner.estimate("meta-llama/Llama-3.1-8B", "fp8", gpu="H100 SXM", engine="tensorrt-llm", prompt_len=128,
                         new_tokens=128)
    assert e.engine == "tensorrt-llm" and e.memory_engine == "vllm" and e.memory.engine == "vllm"
    assert e.speed.decode_tokens_per_s > planner.estimate("meta-llama/Llama-3.1-8B", "fp8", gpu="H100 SXM", engine="hf",
                                                          prompt_len=128, new_tokens=128).speed.decode_tokens_per_s


def test_hf_small_model_is_overhead_bound():
    # a 0.5B model at batch 1 in eager transformers is bound by per-layer launches, not bandwidth
    s = planner.estimate("Qwen/Qwen2.5-0.5B", gpu="H100 SXM", engine="hf", prompt_len=128, new_tokens=128).speed
    assert s.decode.bound == "overhead" and s.decode.overhead_seconds > s.decode.bytes_seconds


def test_batching_raises_throughput_not_per_user_speed():
    one = planner.estimate("meta-llama/Llama-3.1-8B", gpu="H100 SXM", engine="vllm", prompt_len=256, new_tokens=256)
    many = planner.estimate("meta-llama/Llama-3.1-8B", gpu="H100 SXM", engine="vllm", batch=32, prompt_len=256,
                            new_tokens=256)
    assert many.speed.decode_tokens_per_s > 8 * one.speed.decode_tokens_per_s
    assert many.speed.decode_tokens_per_s_per_user < one.speed.decode_tokens_per_s_per_user
    assert many.speed.decode_tokens_per_s == pytest.approx(32 * many.speed.decode_tokens_per_s_per_user)


def test_moe_expert_loop_costs_overhead_only_in_looping_engines():
    spec = planner.get_model("mistralai/Mixtral-8x7B-v0.1")
    assert moe_experts_run(spec, 1) == pytest.approx(32 * 2)
    hf, vllm = get_speed_engine("hf"), get_speed_engine("vllm")
    assert hf.expert_loop and not vllm.expert_loop
    kw = dict(weight_bytes=1e9, linear_flops=1e9, bandwidth_gbps=1000, peak_tflops=100, mfu=0.5, layers=32)
    assert step_terms(hf, experts_run=64, **kw)[2] > step_terms(hf, experts_run=0, **kw)[2]
    assert step_terms(vllm, experts_run=64, **kw)[2] == step_terms(vllm, experts_run=0, **kw)[2]


def test_step_terms_vectorise_and_propagate_unknown_bandwidth():
    engine = get_speed_engine("llamacpp")
    *_, total = step_terms(engine, weight_bytes=np.array([1e9, 1e9]), linear_flops=np.array([1e9, 1e9]),
                           bandwidth_gbps=np.array([[1000.0], [np.nan]]), peak_tflops=np.nan, mfu=0.5,
                           layers=np.array([32, 32]))
    assert total.shape == (2, 2) and np.isfinite(total[0]).all() and np.isnan(total[1]).all()


def test_what_fits_speed_is_the_estimate_speed():
    frame = planner.what_fits("RTX 4090", ["meta-llama/Llama-3.1-8B"], ["bf16", "awq-int4"], context=2048)
    for precision in ("bf16", "awq-int4"):
        row = frame[frame.precision == precision].iloc[0]
        # what_fits takes the whole context as the prompt and decodes at that context
        e = planner.estimate("meta-llama/Llama-3.1-8B", precision, gpu="RTX 4090", seq_len=2048)
        s = planner.estimate("meta-llama/Llama-3.1-8B", precision, gpu="RTX 4090", prompt_len=2048, new_tokens=0).speed
        assert row["decode_tok_s"] == pytest.approx(s.decode_tokens_per_s, rel=1e-6)
        assert e.speed.decode_tokens_per_s == pytest.approx(s.decode_tokens_per_s)


def test_size_cluster_speed_is_the_estimate_speed():
    frame = planner.size_cluster("meta-llama/Llama-3.1-8B", "bf16", seq_len=2048, gpus=["H100 SXM"])
    row = frame.iloc[0]
    s = planner.estimate("meta-llama/Llama-3.1-8B", "bf16", gpu="H100 SXM", seq_len=2048).speed
    assert row["decode_tok_s"] == pytest.approx(s.decode_tokens_per_s)
    assert row["prefill_tok_s"] == pytest.approx(s.prefill_tokens_per_s)


@pytest.fixture
def run_cli(capsys):
    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_cli_prints_the_library_numbers(run_cli, awq_4090):
    code, out, _ = run_cli("estimate", "meta-llama/Llama-3.1-8B", "--precision", "awq-int4", "--gpu", "RTX 4090",
                           "--engine", "vllm", "--prompt-len", "512", "--new-tokens", "256", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["speed"]["decode_tokens_per_s"] == pytest.approx(awq_4090.speed.decode_tokens_per_s)
    assert payload["cost"]["usd_per_million_output_tokens"] == pytest.approx(awq_4090.cost.usd_per_million_output_tokens)
    code, out, _ = run_cli("estimate", "meta-llama/Llama-3.1-8B", "--precision", "awq-int4", "--gpu", "RTX 4090",
                           "--engine", "vllm", "--prompt-len", "512", "--new-tokens", "256", "--explain")
    assert code == 0 and f"{awq_4090.speed.decode_tokens_per_s:,.1f} tok/s" in out and "speed terms" in out


def test_cli_unknown_engine_exits_2(run_cli):
    code, _, err = run_cli("estimate", "Qwen/Qwen2.5-0.5B", "--engine", "vlm")
    assert code == 2 and "vlm" in err


def test_fitted_constants_name_the_published_rows_they_came_from():
    import csv
    from pathlib import Path

    from planner.speed.engines import prior_speed_engines, speed_engine_names

    rows = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "published_speed_rows.csv"
    with rows.open(newline="") as handle:
        published = {row["id"]: row for row in csv.DictReader(handle)}
    calibrated = [get_speed_engine(n) for n in speed_engine_names() if get_speed_engine(n).fitted]
    assert {"llamacpp", "tensorrt-llm"} <= {e.name for e in calibrated}
    for engine in calibrated:
        assert engine.fit_rows and all(published[r]["fp_engine"] == engine.name for r in engine.fit_rows)
        assert all(published[r]["source"] and published[r]["locator"] for r in engine.fit_rows)
        assert engine != prior_speed_engines()[engine.name]


def test_unmeasured_quantized_format_keeps_its_prior_ratio_to_measured_ones():
    llamacpp = get_speed_engine("llamacpp")
    q6 = planner.get_format("gguf-q6_k")
    assert "gguf-q6_k" not in llamacpp.kernels and llamacpp.kernels
    factor, source = llamacpp.kernel_factor(q6)
    assert factor != llamacpp.prior_kernel_factor(q6)[0] and "rescaled" in source


def test_geforce_fp16_accumulate_doubles_the_matmul_peak_only_for_engines_that_use_it():
    from planner.speed.step import matmul_peak

    acc = hardware_db.get("RTX 4090")
    assert matmul_peak(get_speed_engine("llamacpp"), acc, "fp16") == 2 * acc.peak_tflops("fp16")
    assert matmul_peak(get_speed_engine("vllm"), acc, "fp16") == acc.peak_tflops("fp16")
    h100 = hardware_db.get("H100 SXM")
    assert matmul_peak(get_speed_engine("llamacpp"), h100, "fp16") == h100.peak_tflops("fp16")


def test_recommended_format_follows_the_documented_rule():
    from planner.sizing.recommend import HEADROOM_PCT, SLOW_FACTOR

    frame = planner.what_fits("RTX 4090", ["meta-llama/Llama-3.1-8B", "Qwen/Qwen3-30B-A3B"])
    for _, rows in frame.groupby("model", observed=True):
        best = rows[rows.recommended]
        assert len(best) == 1
        best = best.iloc[0]
        assert best.fits and best.supported is not False
        fastest = rows[rows.fits].decode_tok_s.max()
        candidates = rows[rows.fits & (rows.headroom_pct >= HEADROOM_PCT) & (rows.decode_tok_s * SLOW_FACTOR >= fastest)]
        if len(candidates):
            assert best.quality_loss_pct <= candidates.quality_loss_pct.min() + 0.5
            assert best.decode_tok_s * SLOW_FACTOR >= fastest
    # the slow bitsandbytes int8 kernels are never recommended over a format several times faster
    llama = frame[frame.model == "meta-llama/Llama-3.1-8B"]
    assert llama[llama.recommended].precision.iloc[0] != "int8"


def test_capacity_only_gpu_does_not_recommend_formats_needing_recent_hardware():
    frame = planner.what_fits("16GB", ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-7B"])
    chosen = set(frame[frame.recommended].precision.astype(str))
    assert chosen and not chosen & {"fp8-block", "bf16", "fp8", "nvfp4"}


def test_planner_estimate_stays_callable_after_the_submodule_is_imported():
    import planner.estimate as module
    from planner.estimate import Estimate

    assert isinstance(planner.estimate("Qwen/Qwen2.5-0.5B", seq_len=64), Estimate)
    assert isinstance(module("Qwen/Qwen2.5-0.5B", seq_len=64), Estimate)


def test_forward_latency_of_an_encoder_counts_full_attention():
    from hardware_db.probe import HostProbe, host_entry
    from planner.speed.model import forward_latency

    host = host_entry(HostProbe(cpu_name="cpu", vendor="AMD", logical_cores=2, ram_bytes=2**34, available_bytes=2**33,
                                bandwidth_gbps=10.0, matmul_gflops={"fp32": 100.0}, matmul_backend="numpy"))
    spec = planner.get_model("sentence-transformers/all-MiniLM-L6-v2")
    step = forward_latency(spec, planner.get_format("fp32"), get_speed_engine("hf"), host, weight_bytes=9e7,
                           batch=32, tokens=64)
    a = spec.attention
    assert step.inputs["attention_flops"] == pytest.approx(32 * 4 * a.num_heads * a.head_dim * 64 * 64 * spec.num_layers)
    assert step.bound == "compute" and step.seconds > step.compute_seconds
