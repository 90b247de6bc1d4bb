"""Put the planner's predictions next to an executed candidate's measurements.

Runs in the calling process after the measured run (it never imports torch): the model's spec comes
from its config.json, the derived spec of a student / structurally pruned model from
``planner.models.derive``, weights from the format registry, and the peak memory from
``planner.memory.cpu`` (CPU) or ``planner.estimate_memory`` (CUDA). A prediction that cannot be made
is left None with a note saying why; it never turns a measured result into a failure.
"""

from __future__ import annotations

from executors.result import Comparison, ExecutionResult, Prediction, compare
from planner.errors import FitplanError, UnsupportedError
from planner.memory.result import GIB
from planner.strategy import CompressionStrategy

MIB = 2**20
CPU_SPEED_NOTE = ("CPU latency predicted by planner.speed (one forward over the timed batch: max(weight bytes / "
                  "bandwidth, FLOPs / matmul rate) + per-layer overhead) on this host as probed once by "
                  "hardware_db.probe (cached in ~/.cache/fitplan/host.toml)")


def _mib(value: float | None) -> float | None:
    return value / MIB if value is not None else None


def derived_params(strategy: CompressionStrategy, spec) -> int:  # noqa: ANN001 - ModelSpec
    """Parameters of the model the strategy produces (student / structurally pruned / factorised)."""
    from planner.models.derive import derive_spec, low_rank_params

    derived = derive_spec(spec, strategy)
    if strategy.low_rank is not None:
        return low_rank_params(derived, strategy.low_rank)
    return derived.params.total


def predict(result: ExecutionResult, strategy: CompressionStrategy) -> Prediction:
    from planner import get_model

    spec = get_model(result.model_dir)
    prediction = Prediction(device=result.device)
    notes = prediction.notes  # appended to below
    _predict_quality(prediction, result, strategy, spec)
    try:
        prediction.params = derived_params(strategy, spec)
    except FitplanError as error:
        notes.append(f"parameters not predicted: {error}")
    if result.device == "cpu":
        from planner.memory.cpu import estimate_cpu_process_memory
        from planner.planning.local import executor_workload

        kind = result.model_kind or ("encoder" if spec.architecture == "encoder" else "causal-lm")
        workload = executor_workload(spec, kind, speed=result.latency is not None)
        try:
            if strategy.low_rank is not None:
                raise UnsupportedError("a low-rank factorised model has no ModelSpec of its own, so its weights "
                                       "and memory are not predicted")
            estimate = estimate_cpu_process_memory(spec, strategy, workload=workload)
        except FitplanError as error:
            notes.append(f"memory not predicted: {error}")
        else:
            prediction.peak_memory_bytes = round(estimate.peak_allocated_gib * GIB)
            prediction.weight_bytes = round(estimate.cpu.weight_bytes)
            prediction.disk_bytes = prediction.weight_bytes
            prediction.peak_memory_breakdown = {k: round(v * GIB) for k, v in estimate.breakdown_gib.items()}
            prediction.phase_peak_bytes = {k: round(v) for k, v in estimate.cpu.phases_bytes.items()
                                           if k != "load_end"}
        if result.latency is not None:
            _predict_cpu_latency(result, strategy, spec, prediction)
    else:
        _predict_gpu(result, strategy, spec, prediction)
    return prediction


def _predict_cpu_latency(result: ExecutionResult, strategy: CompressionStrategy, spec, prediction: Prediction) -> None:  # noqa: ANN001
    """Latency of the timed forward on the probed host CPU (planner.speed.model.forward_latency)."""
    from hardware_db.probe import cached_host_entry
    from planner.planning.local import forward_ms

    if prediction.weight_bytes is None:
        prediction.notes.append("CPU latency not predicted: the weights were not predicted")
        return
    try:
        host = cached_host_entry()
        step = forward_ms(spec, strategy, host, weight_bytes=prediction.weight_bytes,
                          batch=result.latency.batch_size, tokens=result.latency.seq_len)
    except Exception as error:  # noqa: BLE001 - the latency prediction never costs the measured result
        prediction.notes.append(f"CPU latency not predicted: {error}")
        return
    prediction.latency_ms = step.seconds * 1e3
    prediction.tokens_per_s = step.tokens / step.seconds
    prediction.notes.append(f"{CPU_SPEED_NOTE}: {host.name}, {step.bound}-bound "
                            f"(bytes {step.bytes_seconds * 1e3:.2f} ms, compute "
                            f"{(step.compute_seconds or 0) * 1e3:.2f} ms, overhead {step.overhead_seconds * 1e3:.2f} ms)")


def _predict_gpu(result: ExecutionResult, strategy: CompressionStrategy, spec, prediction: Prediction) -> None:  # noqa: ANN001
    """CUDA: planner.estimate_memory for the derived model in the strategy's Linear format, on the GPU the
    run reported (when the catalog knows it), at the evaluation batch; compared with
    torch.cuda.max_memory_allocated."""
    from planner.planning.local import executor_workload, gpu_run_memory

    kind = result.model_kind or ("encoder" if spec.architecture == "encoder" else "causal-lm")
    workload = executor_workload(spec, kind)
    precision = strategy.quantization.weights if strategy.quantization else "fp32"
    gpu = None
    if result.environment is not None:
        import hardware_db

        try:
            gpu = hardware_db.get(result.environment.device_name)
        except (hardware_db.CatalogError, FitplanError):
            prediction.notes.append(f"GPU {result.environment.device_name!r} is not in the catalog: memory is "
                                    f"predicted without its device facts")
    try:
        estimate = gpu_run_memory(spec, strategy, workload, gpu)
    except FitplanError as error:
        prediction.notes.append(f"memory not predicted: {error}")
        return
    prediction.peak_memory_bytes = round(estimate.peak_allocated_gib * GIB)
    prediction.peak_memory_breakdown = {k: round(v * GIB) for k, v in estimate.breakdown_gib.items()}
    prediction.notes.append(f"CUDA peak predicted for {precision} weights (per-group formats are not modelled), "
                            f"batch {workload.evaluate_batch} x {workload.evaluate_seq_len}")


def _predict_quality(prediction: Prediction, result: ExecutionResult, strategy: CompressionStrategy, spec) -> None:  # noqa: ANN001
    """The accuracy model's quality retained (%), on the scale of the evaluator's metric family."""
    from planner.accuracy import predict_quality
    from planner.accuracy.metrics import metric_family

    family = metric_family(result.quality.metric) if result.quality is not None else None
    try:
        quality = predict_quality(spec, strategy, metric=family or "accuracy")
    except FitplanError as error:
        prediction.notes.append(f"quality not predicted: {error}")
        return
    prediction.quality = quality.retained_pct
    prediction.quality_low_pct, prediction.quality_high_pct = quality.low_pct, quality.high_pct
    prediction.quality_basis = quality.basis
    scale = family or "accuracy (the evaluator's metric family is unknown)"
    prediction.notes.append(f"quality: accuracy model, {quality.basis} basis, on the {scale} scale; 80% interval "
                            f"{quality.low_pct:.1f}-{quality.high_pct:.1f}%")


def comparisons(result: ExecutionResult, prediction: Prediction) -> list[Comparison]:
    if result.device == "cpu":
        rows = [compare("peak RSS (whole run)", "MiB", _mib(result.peak_rss_bytes),
                        _mib(prediction.peak_memory_bytes))]
    else:
        rows = [compare("peak allocated (CUDA)", "MiB", _mib(result.cuda_peak_allocated_bytes),
                        _mib(prediction.peak_memory_bytes))]
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
        rows.append(compare(f"quality retained ({result.quality.evaluator})", "%", result.quality.retained_pct,
                            prediction.quality))
    return rows


def attach_predictions(result: ExecutionResult, strategy: CompressionStrategy) -> None:
    """Fill ``result.prediction`` and ``result.comparisons`` (failed runs get the prediction only)."""
    try:
        prediction = predict(result, strategy)
    except Exception as error:  # a prediction problem never costs the measurement (already saved)
        result.notes.append(f"no prediction: {type(error).__name__}: {error}")
        return
    result.prediction = prediction
    if result.ok:
        result.comparisons = comparisons(result, prediction)
