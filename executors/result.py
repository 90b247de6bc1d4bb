"""The record of one executed candidate: what was measured, next to what the planner predicted.

Byte figures are bytes (the CLI prints MiB), times are seconds unless the name says ``_ms``. Every
field is documented; the JSON written to the run's directory is ``ExecutionResult.model_dump_json()``,
and :func:`append_jsonl` adds it as one line to ``results.jsonl`` under an exclusive lock, so
concurrent runs writing to one directory never interleave their lines.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseMeasurement(_Record):
    """One phase of the run in the measured process (startup = imports, load, compress, evaluate,
    speed, save)."""

    name: str
    seconds: float
    peak_rss_bytes: int | None = Field(None, description="process peak RSS during the phase (VmHWM reset at its "
                                       "start); None where /proc is unavailable")
    rss_end_bytes: int | None = Field(None, description="process RSS when the phase ended")
    cuda_peak_allocated_bytes: int | None = Field(None, description="torch.cuda.max_memory_allocated in the phase")
    cuda_peak_reserved_bytes: int | None = Field(None, description="torch.cuda.max_memory_reserved in the phase")


class LatencyMeasurement(_Record):
    """Median forward latency over one batch (prefill regime) after warm-up calls."""

    batch_size: int
    seq_len: int
    warmup: int
    repeats: int
    median_ms: float
    min_ms: float
    max_ms: float
    tokens_per_s: float


class QualityMeasurement(_Record):
    evaluator: str
    metric: str
    higher_is_better: bool
    compressed: float
    baseline: float = Field(description="the uncompressed model's score on the same task")
    retained_pct: float = Field(description="100 x compressed/baseline (higher is better) or baseline/compressed "
                                "(lower is better, e.g. perplexity)")
    extras: dict[str, Any] = Field(default_factory=dict, description="evaluator-specific figures, e.g. "
                                   "nearest-neighbour agreement")
    baseline_cached: bool = Field(description="the baseline came from the reference cache")


class Prediction(_Record):
    """The planner's figures for the same model and strategy, computed without running anything."""

    device: str
    params: int | None = Field(None, description="parameters of the derived model (student / pruned)")
    weight_bytes: int | None = Field(None, description="exact stored bytes of the weights in the chosen formats")
    disk_bytes: int | None = Field(None, description="size of the saved *.safetensors files: the state-dict bytes "
                                   "(the safetensors JSON header, a few KiB, is not counted)")
    peak_memory_bytes: int | None = Field(None, description="CPU: peak RSS of the process; CUDA: peak allocated")
    peak_memory_breakdown: dict[str, int] = Field(default_factory=dict, description="terms of the peak, bytes")
    phase_peak_bytes: dict[str, int] = Field(default_factory=dict, description="CPU: predicted peak RSS per phase")
    latency_ms: float | None = None
    tokens_per_s: float | None = None
    quality: float | None = Field(None, description="predicted quality retained, % of the uncompressed model, on the "
                                  "evaluator's metric family (planner.accuracy.predict_quality)")
    quality_low_pct: float | None = Field(None, description="lower end of the 80% interval of quality")
    quality_high_pct: float | None = Field(None, description="upper end of the 80% interval of quality")
    quality_basis: str | None = Field(None, description="prior, profile or calibrated")
    notes: list[str] = Field(default_factory=list, description="what was (not) predicted and why")


class Comparison(_Record):
    """One measured figure next to its prediction."""

    quantity: str
    unit: str
    measured: float | None
    predicted: float | None
    error_pct: float | None = Field(None, description="100 x (predicted - measured) / measured")


class Environment(_Record):
    device: str
    device_name: str
    python: str
    platform: str
    cpu_model: str
    cpu_count: int
    torch_threads: int | None
    versions: dict[str, str | None]


class ExecutionResult(_Record):
    """Everything one executed candidate produced (see the field descriptions)."""

    status: Literal["ok", "failed"]
    reason: str | None = Field(None, description="why the run failed (crash, OOM, exception, timeout, "
                               "interruption)")
    run_id: str | None = Field(None, description="unique id of this execution (UTC start time + random suffix); "
                               "names its directory")
    started_at: str | None = Field(None, description="UTC start time, ISO 8601")
    run_dir: str | None = Field(None, description="this execution's own directory: request, result, job files")
    model_dir: str
    model_kind: str | None = None
    strategy: dict[str, Any]
    strategy_summary: str
    device: str
    isolated: bool
    phases: list[PhaseMeasurement] = Field(default_factory=list)
    peak_rss_bytes: int | None = Field(None, description="peak RSS of the measured process: the highest phase peak "
                                       "(the phases cover the isolated child's whole life); for a failed isolated "
                                       "run, the peak of the phase it died in (self-reported, or polled)")
    cuda_peak_allocated_bytes: int | None = None
    params: int | None = Field(None, description="parameters of the compressed model (logical count)")
    params_baseline: int | None = None
    weight_bytes: int | None = Field(None, description="bytes of every tensor in the compressed model's state dict, "
                                     "quantization state included, shared tensors once")
    weight_bytes_baseline: int | None = Field(None, description="the same for the uncompressed float32 model")
    disk_bytes: int | None = Field(None, description="size of the saved model directory (with --save)")
    weights_file_bytes: int | None = Field(None, description="size of its *.safetensors files")
    saved_to: str | None = None
    quantized_at_load: str | None = Field(None, description="format applied by transformers' BitsAndBytesConfig "
                                          "or dtype while loading")
    load_seconds: float | None = None
    compress_seconds: float | None = None
    evaluate_seconds: float | None = None
    wall_seconds: float | None = Field(None, description="whole run, process start to result")
    latency: LatencyMeasurement | None = None
    quality: QualityMeasurement | None = None
    prediction: Prediction | None = None
    comparisons: list[Comparison] = Field(default_factory=list)
    steps: list[dict[str, Any]] = Field(default_factory=list, description="StepReport of each applied step: what "
                                        "was applied, modules skipped and why")
    environment: Environment | None = None
    notes: list[str] = Field(default_factory=list)
    job_dir: str | None = Field(None, description="directory with the run's request, logs and job files")
    result_path: str | None = Field(None, description="where this result's JSON was written")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def phase(self, name: str) -> PhaseMeasurement | None:
        return next((p for p in self.phases if p.name == name), None)

    def save(self, path: str | Path) -> Path:
        """Write the JSON atomically (temp file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
        temporary.write_text(self.model_dump_json(indent=2))
        os.replace(temporary, path)
        return path


def compare(quantity: str, unit: str, measured: float | None, predicted: float | None) -> Comparison:
    error = None
    if measured not in (None, 0) and predicted is not None and not math.isnan(measured):
        error = 100.0 * (predicted - measured) / measured
    return Comparison(quantity=quantity, unit=unit, measured=measured, predicted=predicted, error_pct=error)


def append_jsonl(path: str | Path, line: str) -> None:
    """Append one line to ``path`` under an exclusive ``fcntl.flock`` (released on close, also when the
    process dies), written in one call and fsynced: concurrent writers never interleave or lose lines."""
    import fcntl

    text = line.rstrip("\n") + "\n"
    with open(path, "a", encoding="utf-8") as log:
        fcntl.flock(log.fileno(), fcntl.LOCK_EX)
        try:
            log.write(text)
            log.flush()
            os.fsync(log.fileno())
        finally:
            fcntl.flock(log.fileno(), fcntl.LOCK_UN)
