"""Time of one forward step: the roofline of its two parts plus the engine's fixed costs.

    time = [max(weight bytes / BW', linear FLOPs / P') + max(KV bytes / BW', attention FLOPs / P')]
           / multi-GPU efficiency + overhead

- ``BW' = peak bandwidth x engine bandwidth_efficiency`` (x the format's kernel factor for the
  weight reads: how close its dequantizing kernels get to streaming the stored bytes);
- ``1 / P' = ((1 - s) / matmul peak + s / vector peak) / (engine MFU x the format's compute factor)``:
  a share ``s`` (the engine's ``vector_share``: dequantization, norms, softmax, unfused elementwise
  work) runs on the vector units at the fp32 rate; a device without matrix units for the dtype runs
  everything there;
- overhead = step_overhead + layers x layer_overhead (+ MoE experts run x expert_overhead for engines
  that loop over experts in Python, e.g. transformers' MixtralSparseMoeBlock).

Each part is bound by its own resource (weight matmuls turn compute-bound as the batch grows while
attention over the cache stays bandwidth-bound), as in the roofline model (Williams, Waterman &
Patterson, CACM 2009) applied per operator (LLM-Viewer, Yuan et al. 2024). The constants are per
engine (``planner/data/engines.toml`` ``[speed.*]``, fitted values in ``speed_calibration.toml``).
Every function takes floats or numpy arrays (``what_fits`` evaluates thousands of rows at once with
this formula). Unknown bandwidth propagates as NaN; unknown TFLOPS leave the bytes term alone.
"""

from __future__ import annotations

import numpy as np

from planner.speed.engines import EngineSpeed


def matmul_peak(engine: EngineSpeed, acc, dtype: str) -> float | None:
    """Peak TFLOPS of ``dtype`` matmuls on ``acc`` as this engine runs them.

    The catalog records 16-bit tensor rates with FP32 accumulation; NVIDIA GeForce cards run that at
    half the FP16-accumulate rate (NVIDIA Ada/Ampere GA10x whitepapers, "FP16 Tensor TFLOPS with FP32
    accumulate" at 1/2 on GeForce, full rate on professional and datacenter parts). An engine that
    accumulates in FP16 (``fp16_accumulate``: llama.cpp's cuBLAS path uses CUBLAS_COMPUTE_16F) gets
    the full rate there.
    """
    peak = acc.peak_tflops(dtype)
    if peak and engine.fp16_accumulate and dtype in ("fp16", "bf16") and "GeForce" in acc.name:
        return 2 * peak
    return peak


def overhead_seconds(engine: EngineSpeed, layers, experts_run=0.0):
    """Fixed cost of one step: ``step_overhead + layers x layer_overhead (+ experts run x expert_overhead)``."""
    expert = engine.expert_overhead_us * experts_run if engine.expert_loop else 0.0
    return engine.step_overhead_ms * 1e-3 + (engine.layer_overhead_us * layers + expert) * 1e-6


def seconds_per_flop(engine: EngineSpeed, peak_tflops, vector_tflops, mfu, compute_factor=1.0):
    """``((1 - s) / matmul peak + s / vector peak) / (mfu x compute factor)`` (NaN when both peaks are unknown)."""
    peak = np.asarray(peak_tflops, dtype=float) * 1e12
    vector = np.asarray(vector_tflops, dtype=float) * 1e12
    share = engine.vector_share
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = np.where(np.isfinite(vector), (1 - share) / peak + share / vector, 1.0 / peak)
        rate = np.where(np.isfinite(peak), mixed, 1.0 / vector)
    return rate / (mfu * compute_factor)


def step_terms(engine: EngineSpeed, *, weight_bytes, linear_flops, bandwidth_gbps, peak_tflops, mfu, layers,
               kv_bytes=0.0, attention_flops=0.0, vector_tflops=np.nan, kernel_factor=1.0, compute_factor=1.0,
               experts_run=0.0, devices=1):
    """(bytes seconds, compute seconds, overhead seconds, total seconds) of one step on ``devices`` GPUs.

    Bytes and FLOPs are per device. The bytes and compute seconds are the sums over both parts (for
    the breakdown); the total uses the per-part maximum (see the module docstring).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        bandwidth = np.asarray(bandwidth_gbps, dtype=float) * 1e9 * engine.bandwidth_efficiency
        weights_s = np.asarray(weight_bytes, dtype=float) / (bandwidth * kernel_factor)
        kv_s = np.asarray(kv_bytes, dtype=float) / bandwidth
        per_flop = seconds_per_flop(engine, peak_tflops, vector_tflops, mfu, compute_factor)
        linear_s = np.asarray(linear_flops, dtype=float) * per_flop
        attention_s = np.asarray(attention_flops, dtype=float) * per_flop
    # fmax: an unknown compute term does not hide a known bytes term; unknown bandwidth means unknown speed
    bound = np.fmax(weights_s, linear_s) + np.fmax(kv_s, attention_s)
    bound = np.where(np.isnan(weights_s), np.nan, bound)
    split = np.where(np.asarray(devices) > 1, engine.multi_gpu_efficiency, 1.0)
    overhead = overhead_seconds(engine, np.asarray(layers, dtype=float), experts_run)
    return weights_s + kv_s, linear_s + attention_s, overhead + 0 * bound, bound / split + overhead
