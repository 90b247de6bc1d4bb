"""Decode and prefill speed of a prepared inference request on one accelerator type.

Puts together the work of a step (``planner.speed.roofline``: bytes read, FLOPs), the device
(bandwidth, peak TFLOPS of the format's matmul dtype) and the engine's constants
(``planner.speed.engines``) through the one step-time formula (``planner.speed.step``):

- decode: one step per generated token for the whole batch, at the mean context of the generation
  (prompt + new/2); tokens/s of the batch = batch / step time, per user = 1 / step time;
- prefill: one forward over batch x prompt tokens, compute-bound at the engine's prefill MFU; its time
  is the time to first token.
A device without a bandwidth gives no speed (``SpeedUnknown`` with the reason), never a guess.
"""

from __future__ import annotations

import math

import numpy as np

from hardware_db import Accelerator
from planner.errors import FitplanError
from planner.formats import WeightFormat
from planner.models.spec import ModelSpec
from planner.speed.engines import EngineSpeed
from planner.speed.result import SpeedEstimate, StepBreakdown
from planner.speed.roofline import ReadBytes, StepFlops, decode_step_flops, experts_touched, prefill_step_flops
from planner.speed.step import matmul_peak, step_terms

STEP_FORMULA = ("[max(weight_bytes / (BW x bandwidth_efficiency x kernel_factor), linear_flops / P') + "
                "max(kv_bytes / (BW x bandwidth_efficiency), attention_flops / P')] / multi_gpu_efficiency [if split]"
                " + step_overhead + layers x layer_overhead [+ MoE experts run x expert_overhead]; 1/P' = "
                "((1 - vector_share) / peak + vector_share / fp32_tflops) / (mfu x compute_factor)")


class SpeedUnknown(FitplanError):
    """The device lacks a figure the speed model needs (the message says which)."""


def _bound(bytes_s: float, compute_s: float, overhead_s: float, split: float) -> str:
    compute = compute_s if math.isfinite(compute_s) else 0.0
    if overhead_s > max(bytes_s, compute) / split:
        return "overhead"
    return "compute" if compute > bytes_s else "memory"


def moe_experts_run(spec: ModelSpec, tokens) -> float:
    """Expert runs in one step over ``tokens`` routed tokens, summed over the MoE layers."""
    moe = spec.moe
    if moe is None:
        return 0.0
    return len(moe.moe_layers) * experts_touched(moe.num_experts, moe.experts_per_token, tokens)


def _step(kind: str, engine: EngineSpeed, acc: Accelerator, fmt: WeightFormat, spec: ModelSpec, *,
          weight_bytes: float, kv_bytes: float, flops: StepFlops, tokens: int, routed: float, mfu: float,
          kernel: tuple[float, str], devices: int, extra_inputs: dict, matmul_dtype: str | None = None) -> StepBreakdown:
    dtype = matmul_dtype or fmt.matmul_dtype
    peak = matmul_peak(engine, acc, dtype)
    compute = engine.compute_factor(fmt)
    experts = moe_experts_run(spec, routed)
    bytes_s, compute_s, overhead_s, total = (float(x) for x in step_terms(
        engine, weight_bytes=weight_bytes, kv_bytes=kv_bytes, linear_flops=flops.linear,
        attention_flops=flops.attention, bandwidth_gbps=acc.memory_bandwidth_gbps,
        peak_tflops=peak if peak else np.nan, vector_tflops=acc.fp32_tflops or np.nan, mfu=mfu,
        kernel_factor=kernel[0], compute_factor=compute[0], layers=spec.total_layers, experts_run=experts,
        devices=devices))
    split = engine.multi_gpu_efficiency if devices > 1 else 1.0
    inputs = {"weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "linear_flops": flops.linear,
              "attention_flops": flops.attention,
              "bandwidth_gbps": acc.memory_bandwidth_gbps, "bandwidth_efficiency": engine.bandwidth_efficiency,
              "kernel_factor": kernel[0], f"peak_{dtype}_tflops": peak, "fp32_tflops": acc.fp32_tflops,
              "vector_share": engine.vector_share, "mfu": mfu, "compute_factor": compute[0],
              "multi_gpu_efficiency": split, "step_overhead_ms": engine.step_overhead_ms,
              "layers": spec.total_layers, "layer_overhead_us": engine.layer_overhead_us, **extra_inputs}
    if engine.expert_loop and experts:
        inputs.update(experts_run=experts, expert_overhead_us=engine.expert_overhead_us)
    sources = (f"engine {engine.name}: {engine.source}", f"kernel factor {fmt.name}: {kernel[1]}",
               f"compute factor {fmt.name}: {compute[1]}", f"{acc.name}: {acc.source}")
    if engine.fitted:
        sources += (f"fitted on {len(engine.fit_rows)} published rows: {', '.join(engine.fitted)} "
                    "(planner/data/speed_calibration.toml)",)
    return StepBreakdown(seconds=total, bytes_seconds=bytes_s, compute_seconds=compute_s if math.isfinite(compute_s) else None,
                         overhead_seconds=overhead_s, bound=_bound(bytes_s, compute_s, overhead_s, split),
                         bytes_read=weight_bytes + kv_bytes, flops=flops.total, tokens=tokens,
                         formula=f"{kind}: {STEP_FORMULA}", inputs=inputs, sources=sources)


def predict_speed(spec: ModelSpec, fmt: WeightFormat, engine: EngineSpeed, acc: Accelerator, *, reads: ReadBytes,
                  kv_bytes_at, batch: int, prompt: int, new: int, tp: int = 1, pp: int = 1) -> SpeedEstimate:
    """Decode/prefill speed of ``spec`` in ``fmt`` on ``tp x pp`` devices of type ``acc``.

    ``reads``: weight bytes a step reads on one device; ``kv_bytes_at(batch, tokens)``: KV-cache bytes
    of one device for that batch and context. Raises SpeedUnknown when the bandwidth is unknown.
    """
    if acc.memory_bandwidth_gbps is None:
        raise SpeedUnknown(f"speed unknown: {acc.name} has no memory bandwidth in the catalog "
                           "(add memory_bandwidth_gbps to a user hardware file to get one)")
    engine = engine_for_device(engine, acc)
    kernel = engine.kernel_factor(fmt)
    context = prompt + new // 2
    kv = kv_bytes_at(batch, context) * pp
    decode = _step("decode", engine, acc, fmt, spec, weight_bytes=reads.at(batch), kv_bytes=kv,
                   flops=decode_step_flops(spec, context, batch).split(tp), tokens=batch, routed=batch,
                   mfu=engine.decode_mfu, kernel=kernel, devices=tp,
                   extra_inputs={"batch": batch, "context": context})
    notes = []
    prefill = None
    peak = matmul_peak(engine, acc, fmt.matmul_dtype)
    if peak:
        prefill = _step("prefill", engine, acc, fmt, spec, weight_bytes=reads.at(batch * prompt), kv_bytes=0.0,
                        flops=prefill_step_flops(spec, prompt, batch).split(tp), tokens=batch * prompt,
                        routed=batch * prompt, mfu=engine.prefill_mfu, kernel=(1.0, "prefill reads weights once"),
                        devices=tp, extra_inputs={"batch": batch, "prompt_tokens": prompt})
    else:
        notes.append(f"prefill unknown: {acc.name} has no {fmt.matmul_dtype} TFLOPS in the catalog")
    if decode.compute_seconds is None:
        notes.append(f"decode compute term unknown ({fmt.matmul_dtype} TFLOPS missing): bytes term and overhead only")
    if engine.continuous_batching and batch > 1:
        notes.append(f"{engine.name} batches continuously: {batch} sequences share each step")
    step = decode.seconds
    ttft = prefill.seconds if prefill else None
    return SpeedEstimate(
        engine=engine.name, gpu=acc.name, gpus=tp * pp, batch=batch, prompt_tokens=prompt, new_tokens=new,
        decode_context=context, decode_tokens_per_s=batch / step, decode_tokens_per_s_per_user=1.0 / step,
        per_token_latency_ms=step * 1e3, prefill_tokens_per_s=batch * prompt / ttft if ttft else None,
        ttft_ms=ttft * 1e3 if ttft else None, generation_s=ttft + new * step if ttft is not None else None,
        decode=decode, prefill=prefill, continuous_batching=engine.continuous_batching, calibrated=engine.fitted,
        notes=tuple(notes))


def speed_of(prepared, engine: EngineSpeed, acc: Accelerator | None = None) -> SpeedEstimate:
    """Speed of a ``planner.memory.api.PreparedInference`` on ``acc`` (default: its GPU)."""
    from planner.speed.roofline import read_bytes

    setup, plan = prepared.setup, prepared.plan
    acc = acc if acc is not None else prepared.gpu
    if acc is None:
        raise SpeedUnknown("speed needs a device: give gpu= (a catalog name or a probed host)")
    return predict_speed(setup.spec, setup.fmt, engine, acc, reads=read_bytes(setup.spec, plan.weights, setup.tp),
                         kv_bytes_at=lambda b, t: plan.kv_coeffs.at(b, t, plan.window), batch=prepared.batch,
                         prompt=prepared.tokens.prompt, new=prepared.tokens.new, tp=setup.tp, pp=setup.pp)


def is_host_cpu(acc: Accelerator) -> bool:
    """A probed host CPU (``fitplan hardware probe``) rather than an accelerator."""
    return (acc.form_factor or "").startswith("host CPU")


def engine_for_device(engine: EngineSpeed, acc: Accelerator) -> EngineSpeed:
    """transformers on a probed host CPU runs with the CPU constants (``hf-cpu``), not the GPU ones."""
    from planner.speed.engines import get_speed_engine

    return get_speed_engine("hf-cpu") if engine.name == "hf" and is_host_cpu(acc) else engine


def forward_latency(spec: ModelSpec, fmt: WeightFormat, engine: EngineSpeed, acc: Accelerator, *,
                    weight_bytes: float, batch: int, tokens: int, matmul_dtype: str | None = None) -> StepBreakdown:
    """One forward over ``batch`` x ``tokens`` (the prefill regime; what ``fitplan run`` times), reading
    ``weight_bytes`` once, with matmuls in ``matmul_dtype`` (default the format's)."""
    if acc.memory_bandwidth_gbps is None:
        raise SpeedUnknown(f"speed unknown: {acc.name} has no memory bandwidth in the catalog")
    engine = engine_for_device(engine, acc)
    return _step("forward", engine, acc, fmt, spec, weight_bytes=weight_bytes, kv_bytes=0.0,
                 flops=prefill_step_flops(spec, tokens, batch), tokens=batch * tokens, routed=batch * tokens,
                 mfu=engine.prefill_mfu, kernel=(1.0, "a forward reads the weights once"), devices=1,
                 extra_inputs={"batch": batch, "tokens": tokens}, matmul_dtype=matmul_dtype)
