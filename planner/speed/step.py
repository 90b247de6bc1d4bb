"""Time of one forward step: ``max(bytes term, compute term) / multi-GPU efficiency + overhead``.

- bytes term = bytes read per device / (peak bandwidth x engine bandwidth efficiency x kernel factor)
- compute term = FLOPs per device / (peak TFLOPS of the matmul dtype x engine MFU)
- overhead = step_overhead + layers x layer_overhead + MoE experts run x expert_overhead (engines
  that loop over experts in Python, e.g. transformers' MixtralSparseMoeBlock)

The roofline form is Williams, Waterman & Patterson, "Roofline" (CACM 2009); the overhead terms and
the constants are per engine (``planner/data/engines.toml`` ``[speed.*]``, fitted values in
``speed_calibration.toml``). Every function takes floats or numpy arrays (``what_fits`` evaluates
thousands of rows at once with the same formula). Unknown bandwidth or TFLOPS propagate as NaN.
"""

from __future__ import annotations

import numpy as np

from planner.speed.engines import EngineSpeed


def overhead_seconds(engine: EngineSpeed, layers, experts_run=0.0):
    """Fixed cost of one step: ``step_overhead + layers x layer_overhead (+ experts run x expert_overhead)``."""
    expert = engine.expert_overhead_us * experts_run if engine.expert_loop else 0.0
    return engine.step_overhead_ms * 1e-3 + (engine.layer_overhead_us * layers + expert) * 1e-6


def step_terms(engine: EngineSpeed, *, bytes_read, flops, bandwidth_gbps, peak_tflops, mfu, kernel_factor=1.0,
               layers, experts_run=0.0, devices=1):
    """(bytes seconds, compute seconds, overhead seconds, total seconds) of one step on ``devices`` GPUs.

    ``bytes_read`` and ``flops`` are per device; the slower of the two terms bounds the step, split
    devices keep ``multi_gpu_efficiency`` of their speed (communication), then the overhead adds.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        bytes_s = np.asarray(bytes_read, dtype=float) / (
            np.asarray(bandwidth_gbps, dtype=float) * 1e9 * engine.bandwidth_efficiency * kernel_factor)
        compute_s = np.asarray(flops, dtype=float) / (np.asarray(peak_tflops, dtype=float) * 1e12 * mfu)
    split = np.where(np.asarray(devices) > 1, engine.multi_gpu_efficiency, 1.0)
    bound = np.fmax(bytes_s, compute_s)  # fmax: an unknown compute term does not hide a known bytes term
    bound = np.where(np.isnan(bytes_s), np.nan, bound)  # ... but unknown bandwidth means unknown speed
    overhead = overhead_seconds(engine, np.asarray(layers, dtype=float), experts_run)
    return bytes_s, compute_s, overhead + 0 * bound, bound / split + overhead
