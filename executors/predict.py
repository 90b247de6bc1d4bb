"""Put the planner's predictions next to an executed candidate's measurements.

Runs in the calling process after the measured run (it never imports torch): the model's spec comes
from its config.json, the derived spec of a student / structurally pruned model from
``planner.models.derive``, weights from the format registry, and the peak memory from
``planner.memory.cpu`` (CPU) or ``planner.estimate_memory`` (CUDA). A prediction that cannot be made
is left None with a note saying why; it never turns a measured result into a failure.
"""

from __future__ import annotations

from executors.result import Comparison, ExecutionResult, Prediction, compare
from planner.errors import FitplanError
from planner.memory.result import GIB
from planner.strategy import CompressionStrategy

MIB = 2**20
QUALITY_NOTE = "quality is not predicted: fitplan has no accuracy model yet (predicted quality stays None)"
CPU_SPEED_NOTE = ("CPU latency is not predicted: the speed roofline needs a device's memory bandwidth and FLOPS "
                  "from the hardware catalog, which has no CPU entries")


def _mib(value: float | None) -> float | None:
    return value / MIB if value is not None else None


def predict(result: ExecutionResult, strategy: CompressionStrategy) -> Prediction:
    from planner import get_model

    notes = [QUALITY_NOTE]
    spec = get_model(result.model_dir)
    prediction = Prediction(device=result.device, params=spec.params.total, notes=notes)
    if result.device == "cpu":
        from planner.memory.cpu import CpuWorkload, estimate_cpu_process_memory

        kind = result.model_kind or ("encoder" if spec.architecture == "encoder" else "causal-lm")
        workload = CpuWorkload.default(kind, speed=result.latency is not None)
        try:
            estimate = estimate_cpu_process_memory(spec, strategy, workload=workload)
        except FitplanError as error:
            notes.append(f"memory not predicted: {error}")
        else:
            prediction.peak_memory_bytes = round(estimate.peak_allocated_gib * GIB)
            prediction.weight_bytes = round(estimate.extras["weight_bytes"])
            prediction.disk_bytes = prediction.weight_bytes
            prediction.peak_memory_breakdown = {k: round(v * GIB) for k, v in estimate.breakdown_gib.items()}
            prediction.phase_peak_bytes = {k: round(v) for k, v in estimate.extras["phases_bytes"].items()}
        notes.append(CPU_SPEED_NOTE)
    else:
        notes.append("GPU predictions for executor runs are not wired yet")
    return prediction


def comparisons(result: ExecutionResult, prediction: Prediction) -> list[Comparison]:
    rows = [compare("peak RSS (whole run)", "MiB", _mib(result.peak_rss_bytes), _mib(prediction.peak_memory_bytes))]
    for phase in result.phases:
        if phase.name in prediction.phase_peak_bytes and phase.peak_rss_bytes is not None:
            rows.append(compare(f"peak RSS: {phase.name}", "MiB", _mib(phase.peak_rss_bytes),
                                _mib(prediction.phase_peak_bytes[phase.name])))
    rows.append(compare("weights (state dict)", "MiB", _mib(result.weight_bytes), _mib(prediction.weight_bytes)))
    rows.append(compare("parameters", "count", result.params, prediction.params))
    if result.weights_file_bytes is not None:
        rows.append(compare("saved weights (*.safetensors)", "MiB", _mib(result.weights_file_bytes),
                            _mib(prediction.disk_bytes)))
    if result.latency is not None:
        rows.append(compare("latency per batch", "ms", result.latency.median_ms, prediction.latency_ms))
        rows.append(compare("throughput", "tokens/s", result.latency.tokens_per_s, prediction.tokens_per_s))
    if result.quality is not None:
        rows.append(compare(f"quality ({result.quality.evaluator})", result.quality.metric,
                            result.quality.compressed, prediction.quality))
    return rows


def attach_predictions(result: ExecutionResult, strategy: CompressionStrategy) -> None:
    """Fill ``result.prediction`` and ``result.comparisons`` (failed runs get the prediction only)."""
    try:
        prediction = predict(result, strategy)
    except FitplanError as error:
        result.notes.append(f"no prediction: {error}")
        return
    result.prediction = prediction
    if result.ok:
        result.comparisons = comparisons(result, prediction)
