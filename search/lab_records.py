"""The typed records of ``fitplan lab`` that its checkpoints hold and its report renders.

- :class:`MeasuredRun`: one executed model (the baseline, or the recommended candidate) as measured on
  this machine: quality retained, peak memory, forward latency, and the run directory it came from.
- :class:`Check`: one constraint of the user's, its limit and the candidate's predicted and measured
  values; ``ok`` is None when the measurement cannot decide it (e.g. GPU memory measured on a CPU).
- :class:`Validation`: the recommendation, whether it is *verified* (measured, and every check holds)
  and, when not, why; the deployment note; the export (``--save-best``).

Units: memory in GiB (2**30 bytes), latency in milliseconds, quality in % of the uncompressed model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

GIB = 2**30


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasuredRun(_Record):
    """What one real run of a model measured (``executors.execute``)."""

    strategy: str = Field(description="strategy summary ('baseline' for the uncompressed model)")
    status: Literal["ok", "failed", "not run"]
    reason: str | None = Field(None, description="why it failed or was not run")
    device: str | None = None
    evaluator: str | None = Field(None, description="evaluator and metric, e.g. 'fidelity (cosine)'")
    quality_retained_pct: float | None = None
    memory_gib: float | None = Field(None, description="CPU: peak RSS of the run's process; CUDA: peak allocated")
    latency_ms: float | None = Field(None, description="median forward latency of one batch")
    batch: str | None = Field(None, description="the timed batch, 'B x T tokens'")
    tokens_per_s: float | None = None
    seconds: float | None = Field(None, description="wall time of the run")
    run_dir: str | None = None
    result_path: str | None = None

    @classmethod
    def from_result(cls, result, strategy: str | None = None) -> "MeasuredRun":  # noqa: ANN001 - ExecutionResult
        """The record of an ``executors.ExecutionResult``."""
        memory = result.cuda_peak_allocated_bytes if result.device.startswith("cuda") else result.peak_rss_bytes
        quality, latency = result.quality, result.latency
        return cls(strategy=strategy or result.strategy_summary, status=result.status, reason=result.reason,
                   device=result.device,
                   evaluator=None if quality is None else f"{quality.evaluator} ({quality.metric})",
                   quality_retained_pct=None if quality is None else quality.retained_pct,
                   memory_gib=None if memory is None else memory / GIB,
                   latency_ms=None if latency is None else latency.median_ms,
                   batch=None if latency is None else f"{latency.batch_size} x {latency.seq_len} tokens",
                   tokens_per_s=None if latency is None else latency.tokens_per_s,
                   seconds=result.wall_seconds, run_dir=result.run_dir, result_path=result.result_path)


class Check(_Record):
    """One constraint checked against the recommendation."""

    constraint: str = Field(description="Constraints field, e.g. 'max_memory_gb'")
    limit: float
    predicted: float | None = None
    measured: float | None = None
    ok: bool | None = Field(description="the measured value meets the limit (None: not measurable here)")
    note: str = ""


class ExportRecord(_Record):
    """The ``--save-best`` export: a directory ``from_pretrained`` reloads (``executors.export_model``)."""

    strategy: str
    status: Literal["ok", "failed", "not exported"]
    path: str | None = None
    quantization: str | None = None
    round_trip_max_abs_diff: float | None = None
    round_trip_verified: bool | None = None
    reason: str | None = None


class Validation(_Record):
    """Step 4's verdict on the recommendation."""

    strategy: str | None = Field(description="the recommended strategy (None: nothing feasible)")
    strategy_json: str | None = None
    verified: bool = Field(description="measured, and every measurable constraint holds on the measurement")
    reason: str = Field(description="why it is (not) verified, one sentence")
    checks: list[Check] = Field(default_factory=list)
    measured: MeasuredRun | None = None
    deployment_note: str = ""
    export: ExportRecord | None = None
    predicted_only: str | None = Field(None, description="when nothing the executors run here is feasible: the "
                                       "plan's predicted recommendation, which cannot be executed on this machine")


class LabSummary(_Record):
    """What the lab adds to a search's report: the measured baseline, the validation, and what was not
    done (``stopped``: e.g. no torch, so nothing was executed)."""

    model_dir: str
    steps: dict[str, str] = Field(default_factory=dict, description="step -> 'done', 'resumed' or why not done")
    baseline: MeasuredRun | None = None
    profile: str | None = Field(None, description="the sensitivity profile used, one line (None: none)")
    validation: Validation | None = None
    stopped: str | None = Field(None, description="why the lab stopped before executing candidates")
    notes: list[str] = Field(default_factory=list, description="what the lab left out and why")
