"""Calibration store: measured results that correct the priors per model family and technique.

A store is a directory of JSONL files, read recursively (``**/*.jsonl``). Two kinds of line are read:

1. :class:`CalibrationRecord` JSON (``"kind": "fitplan.calibration_record"``): what
   :meth:`CalibrationStore.append` writes to ``<dir>/calibration.jsonl``;
2. the executors' ``results.jsonl`` lines (``executors.result.ExecutionResult`` JSON): a successful run
   with ``quality.retained_pct`` becomes a record; its model family is the ``model_type`` of the
   ``config.json`` in its ``model_dir`` (a run whose model directory is gone has no family and is
   skipped, with a note in :attr:`CalibrationStore.skipped`). A run whose ``prediction.quality`` is empty
   is compared with today's prior prediction for its model directory and strategy.

The correction (:meth:`CalibrationStore.correction`): for each record of the same model family that
used this technique alone (a stacked run cannot tell which part was off, so it is not used), measured on a model of comparable size (within a factor of ``SIZE_FACTOR`` = 8 of the
predicted model's parameters, when both are known: a tiny test model does not calibrate a 70B one), the log-ratio of measured to predicted damage ``r = ln(d_measured / d_predicted)``
(metric-independent: both damages are on the record's metric). The prior damage of that technique is
multiplied by ``exp(n / (n + N0) * mean(r))`` (shrunk towards the prior with ``N0 = 2`` pseudo-records)
and its log-spread becomes ``sqrt(scatter^2 + sigma_prior^2 * N0 / (N0 + n))``, scatter = the standard
deviation of ``r`` (the prior spread while n < 3). Records of other families are never applied.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.accuracy.metrics import DAMAGE_FLOOR, metric_family
from planner.errors import InvalidConfigError

RECORD_KIND = "fitplan.calibration_record"
SHRINK_PSEUDO_RECORDS = 2.0
SIZE_FACTOR = 8.0
TECHNIQUE_OF_PART = {"quantization": "quantization", "sparsity": "sparsity", "low_rank": "low_rank",
                     "distillation": "structure"}


class CalibrationRecord(BaseModel):
    """One measured strategy next to the prediction made for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["fitplan.calibration_record"] = RECORD_KIND
    strategy: dict[str, Any] = Field(description="CompressionStrategy JSON")
    model_name: str
    family: str | None = Field(description="the model's config model_type (None = unknown, not applied)")
    fingerprint: str | None = None
    params: int | None = None
    evaluator: str
    metric: str
    metric_family: Literal["accuracy", "perplexity", "embedding"] | None = None
    measured_retained_pct: float = Field(gt=0, allow_inf_nan=False)
    predicted_retained_pct: float | None = Field(None, gt=0, allow_inf_nan=False,
                                                 description="the planner's prediction on the same metric when "
                                                 "the run was made")
    prediction_source: Literal["recorded", "recomputed"] | None = Field(
        None, description="recorded = predicted when the run was made; recomputed = from today's priors when "
        "the result carried no prediction")
    device: str | None = None
    measured_memory_bytes: int | None = None
    measured_latency_ms: float | None = None
    source: str = Field(description="where the record came from, e.g. a results.jsonl path and line")
    timestamp: str | None = None

    @cached_property
    def techniques(self) -> tuple[str, ...]:
        """Accuracy-rule techniques the strategy uses ('structure' for distillation and structured
        pruning)."""
        found = []
        for key, technique in TECHNIQUE_OF_PART.items():
            part = self.strategy.get(key)
            if not part:
                continue
            if key == "sparsity" and part.get("pattern") in ("heads", "ffn", "layers"):
                technique = "structure"
            if technique not in found:
                found.append(technique)
        return tuple(found)

    @property
    def log_residual(self) -> float | None:
        """ln(measured damage / predicted damage); None without a prediction."""
        if self.predicted_retained_pct is None:
            return None
        measured = max(-math.log(self.measured_retained_pct / 100.0), DAMAGE_FLOOR)
        predicted = max(-math.log(self.predicted_retained_pct / 100.0), DAMAGE_FLOOR)
        return math.log(measured / predicted)


class Correction(BaseModel):
    """How the prior of one technique is corrected for one model family."""

    model_config = ConfigDict(frozen=True)

    family: str
    technique: str
    log_bias: float = Field(description="added to ln d (after shrinkage)")
    scatter: float | None = Field(description="std of the log-residuals (None while n < 3)")
    n: int


def _family_of(model_dir: str | None) -> str | None:
    if not model_dir:
        return None
    config = Path(model_dir) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _prior_prediction(model_dir: str, strategy: dict, metric: str | None,
                      specs: dict[str, Any] | None = None) -> float | None:
    """Today's prior prediction for a run that carried none (None if the model cannot be read).
    ``specs`` caches model specs by directory while a store loads."""
    from planner.accuracy.predict import predict_quality
    from planner.errors import FitplanError
    from planner.models import get_model
    from planner.strategy import CompressionStrategy

    try:
        specs = {} if specs is None else specs
        spec = specs.get(model_dir) or specs.setdefault(model_dir, get_model(model_dir))
        return predict_quality(spec, CompressionStrategy.model_validate(strategy),
                               metric=metric or "accuracy").retained_pct
    except (FitplanError, ValidationError, OSError):
        return None


def record_from_result(payload: dict, source: str, specs: dict[str, Any] | None = None) -> CalibrationRecord | None:
    """A record from one executors results.jsonl line (None for a failed or unmeasured run). Without a
    recorded prediction, today's prior prediction is used (``prediction_source="recomputed"``)."""
    quality = payload.get("quality") or {}
    if payload.get("status") != "ok" or not quality.get("retained_pct"):
        return None
    prediction = payload.get("prediction") or {}
    latency = payload.get("latency") or {}
    model_dir = payload.get("model_dir")
    family = _family_of(model_dir)
    metric = metric_family(str(quality.get("metric", "")))
    predicted, how = prediction.get("quality"), "recorded"
    if predicted is None and family is not None:
        predicted, how = _prior_prediction(str(model_dir), payload.get("strategy") or {}, metric, specs), "recomputed"
    return CalibrationRecord(
        strategy=payload.get("strategy") or {}, model_name=str(model_dir), family=family,
        params=payload.get("params_baseline"), evaluator=str(quality.get("evaluator")),
        metric=str(quality.get("metric")), metric_family=metric,
        measured_retained_pct=float(quality["retained_pct"]), predicted_retained_pct=predicted,
        prediction_source=how if predicted is not None else None, device=payload.get("device"),
        measured_memory_bytes=payload.get("peak_rss_bytes") or payload.get("cuda_peak_allocated_bytes"),
        measured_latency_ms=latency.get("median_ms"), source=source,
    )


class CalibrationStore:
    """Measured records read from a directory (see the module docstring)."""

    def __init__(self, records: list[CalibrationRecord], directory: Path | None = None,
                 skipped: list[str] | None = None):
        self.records = tuple(records)
        self.directory = directory
        self.skipped = tuple(skipped or ())
        self._corrections: dict[tuple, Correction | None] = {}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CalibrationStore":
        directory = Path(directory)
        if not directory.is_dir():
            raise InvalidConfigError(f"calibration store {directory} is not a directory.")
        records, skipped = [], []
        specs: dict[str, Any] = {}
        for path in sorted(directory.rglob("*.jsonl")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                where = f"{path}:{number}"
                try:
                    payload = json.loads(line)
                    if payload.get("kind") == RECORD_KIND:
                        record = CalibrationRecord.model_validate(payload)
                    else:
                        record = record_from_result(payload, where, specs)
                except (json.JSONDecodeError, ValidationError, AttributeError, TypeError, ValueError) as error:
                    skipped.append(f"{where}: not a calibration record ({type(error).__name__})")
                    continue
                if record is None:
                    continue
                if record.family is None:
                    skipped.append(f"{where}: model family unknown (model directory gone?)")
                records.append(record)
        return cls(records, directory, skipped)

    def append(self, record: CalibrationRecord) -> Path:
        """Append one record to <dir>/calibration.jsonl (never rewrites earlier lines)."""
        if self.directory is None:
            raise ValueError("this store has no directory to write to.")
        if record.timestamp is None:
            record = record.model_copy(update={"timestamp": datetime.now(timezone.utc).isoformat()})
        path = self.directory / "calibration.jsonl"
        with path.open("a", encoding="utf-8") as handle:
            handle.write(record.model_dump_json() + "\n")
        self.records = self.records + (record,)
        self._corrections.clear()
        return path

    def __len__(self) -> int:
        return len(self.records)

    @property
    def families(self) -> set[str]:
        return {r.family for r in self.records if r.family}

    def records_for(self, family: str, technique: str) -> list[CalibrationRecord]:
        """Records of this model family whose strategy used this technique ('quantization',
        'sparsity', 'structure' or 'low_rank'; 'distillation' is read as 'structure')."""
        technique = TECHNIQUE_OF_PART.get(technique, technique)
        return [r for r in self.records if r.family == family and technique in r.techniques]

    def comparable(self, family: str, technique: str, params: float | None) -> list[CalibrationRecord]:
        """Records of this family that used only this technique, on a model within SIZE_FACTOR of
        ``params`` (the records a correction is made of)."""
        return [r for r in self.records_for(family, technique)
                if len(r.techniques) == 1
                and (params is None or not r.params or 1 / SIZE_FACTOR <= r.params / params <= SIZE_FACTOR)]

    def correction(self, family: str, technique: str, params: float | None = None) -> Correction | None:
        """Correction of one technique's prior for one family (and model size); None without usable
        records."""
        key = (family, technique, params)
        if key not in self._corrections:
            residuals = [r.log_residual for r in self.comparable(family, technique, params)]
            residuals = [x for x in residuals if x is not None]
            if not residuals:
                self._corrections[key] = None
            else:
                n = len(residuals)
                mean = sum(residuals) / n
                scatter = (math.sqrt(sum((x - mean) ** 2 for x in residuals) / (n - 1)) if n >= 3 else None)
                self._corrections[key] = Correction(family=family, technique=technique,
                                                    log_bias=n / (n + SHRINK_PSEUDO_RECORDS) * mean,
                                                    scatter=scatter, n=n)
        return self._corrections[key]
