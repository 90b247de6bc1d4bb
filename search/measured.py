"""What the closed loop (:mod:`search.loop`) keeps in a study, and how a table row is checked against it.

Everything lives in the study's **user attributes**, one key per item, so ``fitplan results`` and
``fitplan report`` rebuild the loop's table from the study alone (the loop writes them, nothing else
does):

=================================  ================================================================================
``fitplan_measured:<digest>``      :class:`MeasuredCandidate`: one strategy's real run (ok or failed with the
                                   reason), with the predictions every predictor state made for it
``fitplan_rescored:<digest>``      :class:`Rescored`: the strategy's latest prediction (after the last refinement)
``fitplan_selected:<round>``       the strategy keys a round chose to execute (so a resumed round executes the
                                   same ones)
``fitplan_rounds``                 list of :class:`RoundReport` JSON: predictor quality per round
``fitplan_loop``                   the loop's request (model directory, evaluator, device, K, rounds, ...)
``fitplan_loop_state``             ``{"rounds_done": r}``
=================================  ================================================================================

``<digest>`` = the first 16 hex digits of the SHA-256 of the strategy key (``search.objective.strategy_key``).

Why not the trials' own user attributes: Optuna refuses to change a finished trial
(``UpdateFinishedTrialError`` in every storage; the cached RDB storage never re-reads one either), and a
measurement or a refinement always comes after the trial finished. Measurements are per strategy, not per
trial: equal strategies proposed twice share one measurement.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MEASURED_PREFIX = "fitplan_measured:"
RESCORED_PREFIX = "fitplan_rescored:"
SELECTED_PREFIX = "fitplan_selected:"
ROUNDS_KEY = "fitplan_rounds"
LOOP_KEY = "fitplan_loop"
STATE_KEY = "fitplan_loop_state"
ROUND_ATTR = "fitplan_round"  # trial user attribute: the loop round that sampled the trial

MEASURED_COLUMNS: tuple[str, ...] = (
    "measured_quality_retained_pct", "measured_memory_gib", "measured_latency_ms", "measured_status",
    "measured_run", "verified",
)
"""Columns the loop adds to the trade-off table (after ``search.candidates.TABLE_COLUMNS``):

- ``measured_quality_retained_pct``: measured quality retained, % of the uncompressed model (evaluator's metric)
- ``measured_memory_gib``: measured peak memory (CPU: process peak RSS; CUDA: peak allocated), GiB
- ``measured_latency_ms``: measured median forward latency of the executors' timed batch, ms
- ``measured_status``: ``ok``, ``failed: <reason>``, or None (not executed)
- ``measured_run``: the run's result file (executors' ``result.json``)
- ``verified``: measured ok and the measured figures satisfy every constraint they can be checked on
"""


def number(value: Any) -> float | None:
    """A table cell as a float: None for a missing value, NaN, a boolean or anything not numeric."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def digest(key: str) -> str:
    """Short stable id of a strategy key (study attribute names stay short)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class PredictedFigures(BaseModel):
    """What one predictor state predicted for a strategy (the figures a measurement is compared with)."""

    model_config = ConfigDict(extra="forbid")

    quality_retained_pct: float | None = None
    quality_low_pct: float | None = None
    quality_high_pct: float | None = None
    basis: str | None = None
    memory_gib: float | None = None
    latency_ms: float | None = None


class MeasuredCandidate(BaseModel):
    """One strategy executed for real by the loop (``fitplan_measured:<digest>``)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="strategy key (canonical CompressionStrategy JSON)")
    summary: str
    round: int = Field(description="the round that executed it")
    trial: int | None = Field(None, description="a main-study trial that proposed it")
    selection: str = Field("", description="why the round chose it")
    status: Literal["ok", "failed"]
    reason: str | None = None
    quality_retained_pct: float | None = None
    memory_gib: float | None = None
    latency_ms: float | None = None
    run: str | None = Field(None, description="the run's result file")
    worker: str | None = None
    seconds: float | None = None
    timeout_s: float | None = Field(None, description="the execution's timeout, seconds (a run killed then is "
                                    "failed with reason 'timed out after N s')")
    predicted: dict[int, PredictedFigures] = Field(
        default_factory=dict, description="by predictor state j (the predictor fitted on rounds < j: state 1 = "
        "priors/profile and calibration records from before this search): its prediction, made before this "
        "measurement existed")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def status_text(self) -> str:
        return "ok" if self.ok else f"failed: {self.reason or 'unknown reason'}"


class Rescored(BaseModel):
    """A strategy's prediction after the latest refinement (``fitplan_rescored:<digest>``)."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(description="predictor state that made it (fitted on rounds < round)")
    record: dict[str, Any] = Field(description="the trial record (search.objective): prediction, violations, ...")
    values: list[float] | None = Field(description="the study's objective values (None: an objective unknown)")
    violation: float = Field(description="sum of the relative constraint excesses (<= 0: feasible)")


class RoundReport(BaseModel):
    """One round of the loop and the quality of the predictor that chose its candidates.

    The predictor of round r was fitted on the measurements of rounds < r (round 1: priors or the profile,
    plus calibration records from before this search); it is scored on every successful measurement of
    rounds >= r, none of which it was fitted on. The figures grow as later rounds measure more.
    """

    model_config = ConfigDict(extra="forbid")

    round: int
    predictor: str = Field(description="what predicted: priors / profile, calibrated on n records")
    fit_records: int = Field(description="calibration records of this model family the predictor was fitted on")
    held_out: int = Field(description="successful measurements it is scored on (rounds >= this one)")
    quality_loss_mae: float | None = Field(None, description="mean |predicted - measured| quality loss, points")
    quality_spearman: float | None = Field(None, description="Spearman rank correlation of predicted and measured "
                                           "quality loss (None below 3 points or without variation)")
    quality_coverage: float | None = Field(None, description="share of measured quality inside the 80% interval")
    memory_error_pct: float | None = Field(None, description="median |predicted - measured| / measured memory, %")
    latency_error_pct: float | None = Field(None, description="median |predicted - measured| / measured latency, %")
    executed: int = Field(0, description="real evaluations this round")
    failed: int = Field(0, description="of which failed for real")
    evaluations: int = Field(0, description="real evaluations so far (all rounds up to this one)")
    recommendation: str | None = Field(None, description="the recommended strategy after this round")
    recommendation_verified: bool = Field(False, description="it was measured and satisfies every constraint, and "
                                          "no unmeasured candidate ranks above it (SearchResult.best_is_verified)")
    seconds: float | None = Field(None, description="wall time of the round")


def study_items(attrs: dict[str, Any], prefix: str, model: type[BaseModel]) -> dict[str, Any]:
    """The study attributes under ``prefix`` as ``{suffix: model}`` (unreadable entries are skipped)."""
    from pydantic import ValidationError

    out = {}
    for name, value in attrs.items():
        if name.startswith(prefix):
            try:
                out[name[len(prefix):]] = model.model_validate(value)
            except ValidationError:
                continue
    return out


MEASURED_WHAT = {"max_accuracy_loss": "quality loss", "max_memory_gb": "memory", "min_speedup": "speedup"}


def measured_checks(measured: MeasuredCandidate, limits: dict[str, float], baseline_latency_ms: float | None, *,
                    predicted: dict[str, float] | None = None, row: dict[str, Any] | None = None,
                    same_device: bool = True) -> list[str]:
    """The constraints a measured candidate breaks, one clause each (empty: verified).

    Checked on the measurements: ``max_accuracy_loss`` (100 - measured quality retained), and when the
    search plans for the device the candidates ran on (``same_device``: deployment target ``local``)
    ``max_memory_gb`` (measured peak) and ``min_speedup`` (measured baseline latency / measured latency;
    without a measured baseline the speedup cannot be verified, which is a clause too). Other limits (cost,
    decode tokens/s; memory and speedup planned for another device) are not measured and stay checked on
    the prediction: ``predicted`` is the trial record's ``constraint_values`` (relative excess per limit)
    and ``row`` the table row holding the predicted figure. A 'hardware' excess is not a clause when the
    candidate ran on the planned device: the run shows the device runs it.
    """
    from planner.planning.limits import LIMITS, describe, format_value

    clauses = []
    measured_values = {"max_accuracy_loss": None if measured.quality_retained_pct is None
                       else 100.0 - measured.quality_retained_pct}
    if same_device:
        measured_values["max_memory_gb"] = measured.memory_gib
    if "min_speedup" in limits and same_device:
        if baseline_latency_ms and measured.latency_ms:
            measured_values["min_speedup"] = baseline_latency_ms / measured.latency_ms
        else:
            clauses.append("speedup not verified: the uncompressed baseline's latency was not measured")
    for name, value in measured_values.items():
        if name not in limits:
            continue
        limit, bound = LIMITS[name], limits[name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            clauses.append(f"measured {limit.what} unknown")
            continue
        amount = value - bound if limit.kind == "max" else bound - value
        if amount > 1e-9:
            sign = ">" if limit.kind == "max" else "<"
            clauses.append(f"measured {MEASURED_WHAT[name]} {format_value(limit, value)} {sign} "
                           f"{format_value(limit, bound)}")
    columns = {"loss_pct": "quality_loss_pct"}
    for name, excess in (predicted or {}).items():
        if not excess or excess <= 0 or name in measured_values or (name == "min_speedup" and same_device):
            continue
        if name == "hardware" and not same_device:
            clauses.append("predicted: the planned device cannot run it")
            continue
        if name not in LIMITS or name not in limits:
            continue
        limit = LIMITS[name]
        value = (row or {}).get(columns.get(limit.column, limit.column))
        clauses.append("predicted " + describe(limit, value, limits[name]))
    return clauses
