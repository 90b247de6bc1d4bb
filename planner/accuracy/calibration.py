"""Calibration store: measured results that correct the priors per model family and technique.

A store is a directory of JSONL files, read recursively (``**/*.jsonl``). Two kinds of line are read:

1. :class:`CalibrationRecord` JSON (``"kind": "fitplan.calibration_record"``): what
   :meth:`CalibrationStore.append` writes to ``<dir>/calibration.jsonl``;
2. the executors' ``results.jsonl`` lines (``executors.result.ExecutionResult`` JSON): a successful run
   with ``quality.retained_pct`` becomes a record; its model family is the ``model_type`` of the
   ``config.json`` in its ``model_dir`` (a run whose model directory is gone has no family and is
   skipped, with a note in :attr:`CalibrationStore.skipped`). A run whose ``prediction.quality`` is empty
   is compared with today's prior prediction for its model directory and strategy.

Quality (:meth:`CalibrationStore.residual_model`, applied by ``predict_quality(..., calibration=store)``):
a Bayesian linear residual model per (model family, technique) on the strategy's features, fitted on
``ln(measured damage / predicted damage)`` of the family's records, single-technique and stacked, shrunk
towards zero residual (the base prediction) so that its interval narrows as records accumulate and
widens away from the measured settings; formulas and their sources in :mod:`.residual` and :mod:`.bayes`.
Only records of models within a factor ``SIZE_FACTOR`` = 8 of the predicted model's parameters count (a
tiny test model does not calibrate a 70B one). Records of another model family are never applied.

Device (:meth:`CalibrationStore.device_correction`): memory and latency of this model family measured on
one device, as a factor on the planner's prediction: ``y_i = ln(measured_i / predicted_i)`` of the records
(raw predictions, before any correction), an intercept-only model of :mod:`.bayes` with prior scale
``DEVICE_PRIOR_SD`` and noise ``DEVICE_NOISE`` per quantity: the factor ``exp(posterior mean)`` is shrunk
towards 1 with few records (one memory record 10% off moves it ~92% of the way, one latency record ~76%;
the Student-t prior lets a large, consistent factor through: one latency record 3x off moves it ~95%),
its log-spread is the predictive spread of a new candidate.
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from planner.accuracy import bayes
from planner.accuracy.metrics import damage_from_retained, metric_family
from planner.accuracy.priors import Z80
from planner.errors import FitplanError, InvalidConfigError

RECORD_KIND = "fitplan.calibration_record"
SIZE_FACTOR = 8.0
DEVICE_PRIOR_SD = {"memory": 0.2, "latency": 0.3}
"""prior scale of ln(measured / predicted) on a device: speed is 9-23% off (median by engine) on published
rows (benchmarks/speed_accuracy.py); memory 0.7% (GPU inference) to ~10% (fine-tuning) off on published
rows (README accuracy table), but a CPU run's process peak, runtime included, 14-24% off on this machine
(benchmarks/calibration_refine.py)"""
DEVICE_NOISE = {"memory": 0.05, "latency": 0.15}
"""prior scale of one run's scatter around the device factor: peak RSS repeats within a few %; CPU latency
on a shared machine within ~15% run to run (benchmarks/executor_speed.py)"""
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
    predicted_memory_bytes: int | None = Field(None, gt=0, description="the planner's raw (uncorrected) memory "
                                               "prediction of this run on its device, e.g. the executor's Prediction")
    predicted_latency_ms: float | None = Field(None, gt=0, allow_inf_nan=False,
                                               description="the planner's raw (uncorrected) latency prediction")
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
    def run_key(self) -> tuple:
        """What identifies the measurement: model, strategy, evaluator and measured value (a store that reads
        a run both from the executors' results.jsonl and from an appended record counts it once)."""
        return (self.family, os.path.normpath(self.model_name), json.dumps(self.strategy, sort_keys=True),
                self.evaluator, round(self.measured_retained_pct, 6))


class Correction(BaseModel):
    """One fitted block of the residual model: how a technique's prior (or profile) is corrected for
    one model family (posterior means and standard deviations of the coefficients)."""

    model_config = ConfigDict(frozen=True)

    family: str
    technique: str
    basis: Literal["prior", "profile"]
    n: int = Field(description="records with a part of this technique on this basis")
    stacked: int = Field(description="of which stack several techniques")
    coefficients: dict[str, tuple[float, float]] = Field(description="feature -> (posterior mean, posterior sd) "
                                                         "of its coefficient in ln(measured / predicted damage)")
    noise_sigma: float = Field(description="posterior scale of the records' scatter around the model (log)")


class DeviceCorrection(BaseModel):
    """Measured / predicted factor of one quantity of a model family on one device."""

    model_config = ConfigDict(frozen=True)

    family: str
    device: str
    quantity: Literal["memory", "latency"]
    factor: float = Field(description="multiply the planner's prediction by this (1.0 without records)")
    log_spread: float = Field(description="predictive log-spread of a new candidate's measured/predicted ratio "
                                          "(normal-equivalent of the Student-t 80% interval)")
    n: int = Field(description="records behind it (0: nothing measured, factor 1)")

    @property
    def interval(self) -> tuple[float, float]:
        """80% interval of the factor."""
        return (self.factor * math.exp(-Z80 * self.log_spread), self.factor * math.exp(Z80 * self.log_spread))

    def note(self) -> str:
        return (f"{self.quantity} x{self.factor:.3f} from {self.n} measured {self.family} run(s) on {self.device} "
                f"(calibration store; 80% factor {self.interval[0]:.2f}-{self.interval[1]:.2f})")


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
    from planner.models import get_model
    from planner.strategy import CompressionStrategy

    try:
        specs = {} if specs is None else specs
        spec = specs.get(model_dir) or specs.setdefault(model_dir, get_model(model_dir))
        return predict_quality(spec, CompressionStrategy.model_validate(strategy),
                               metric=metric or "accuracy").retained_pct
    except (FitplanError, ValidationError, OSError):
        return None


def record_from_result(payload: dict, source: str, specs: dict[str, Any] | None = None, *,
                       device: str | None = None) -> CalibrationRecord | None:
    """A record from one executors result (a results.jsonl line or a run's result.json; None for a failed or
    unmeasured run). Without a recorded prediction, today's prior prediction is used
    (``prediction_source="recomputed"``). ``device``: the name device corrections match on (e.g.
    ``planner.planning.candidate.Evaluator.device_name``); default the executor's device string ('cpu',
    'cuda:0')."""
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
        prediction_source=how if predicted is not None else None, device=device or payload.get("device"),
        measured_memory_bytes=payload.get("peak_rss_bytes") or payload.get("cuda_peak_allocated_bytes"),
        measured_latency_ms=latency.get("median_ms"), source=source,
        predicted_memory_bytes=prediction.get("peak_memory_bytes") or None,
        predicted_latency_ms=prediction.get("latency_ms") or None,
    )


class CalibrationStore:
    """Measured records read from a directory (see the module docstring)."""

    def __init__(self, records: list[CalibrationRecord], directory: Path | None = None,
                 skipped: list[str] | None = None):
        self.records = tuple(records)
        self.directory = directory
        self.skipped = tuple(skipped or ())
        self._models: dict[tuple, Any] = {}
        self._specs: dict[str, Any] = {}

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "CalibrationStore":
        directory = Path(directory)
        if not directory.is_dir():
            raise InvalidConfigError(f"calibration store {directory} is not a directory.")
        records, skipped = [], []
        specs: dict[str, Any] = {}
        seen: dict[tuple, str] = {}
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
                key = record.run_key
                if key in seen:  # the same run read twice (its results.jsonl line and its record)
                    skipped.append(f"{where}: the same measurement as {seen[key]}: counted once")
                    continue
                seen[key] = where
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
        self._models.clear()
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

    def _spec(self, name: str):
        """The record's model spec from a local directory or the built-in registry (cached; None when it
        cannot be read that way, e.g. its directory is gone: the hub is never asked)."""
        if name not in self._specs:
            from planner.models import get_model, registry

            self._specs[name] = None
            try:
                if Path(name).expanduser().exists() or registry.find_entry(name) is not None:
                    self._specs[name] = get_model(name)
            except (FitplanError, OSError, ValueError):
                pass
        return self._specs[name]

    def _record_spec(self, record: CalibrationRecord, spec):
        """The spec of the model a record measured: read from its name, or ``spec`` itself when the record
        names it (same fingerprint, or same name and size) but its files cannot be read here."""
        found = self._spec(record.model_name)
        if found is None:
            from planner.accuracy.profile import model_fingerprint

            same_fingerprint = bool(record.fingerprint and spec.config
                                    and record.fingerprint == model_fingerprint(spec.config))
            same_name = record.model_name == spec.name and record.params in (None, spec.params.total)
            if same_fingerprint or same_name:
                return spec
        return found

    def comparable(self, record: CalibrationRecord, family: str, params: float | None) -> bool:
        """True for a record of this family on a model within SIZE_FACTOR of ``params`` (or of unknown
        size)."""
        if record.family != family:
            return False
        size = record.params
        if not size:
            spec = self._spec(record.model_name)
            size = spec.params.total if spec is not None else None
        return params is None or not size or 1 / SIZE_FACTOR <= size / params <= SIZE_FACTOR

    def residual_model(self, spec, facts, base, priors, profile=None):
        """The quality residual model (:class:`planner.accuracy.residual.ResidualModel`) of ``spec``'s family
        from the records of comparable size, or None without usable records.

        ``base(spec, strategy, use_profile) -> (parts, bases, facts)``: the uncorrected parts the accuracy
        model predicts for a record (``predict_quality`` passes its own); ``profile`` keys the cache (parts
        on the profile basis depend on it)."""
        from planner.accuracy.residual import fit_residual_model, observation
        from planner.strategy import CompressionStrategy

        key = (facts.family, facts.params, facts.tokens_per_param, id(profile), id(priors))
        if key in self._models:
            return self._models[key]
        observations, notes = [], []
        unread = unknown_metric = 0
        for record in self.records:
            if not record.techniques or not self.comparable(record, facts.family, facts.params):
                continue
            family = record.metric_family or metric_family(record.metric)
            if family is None:
                unknown_metric += 1
                continue
            scale = priors.metric_scale(family)
            try:
                strategy = CompressionStrategy.model_validate(record.strategy)
            except ValidationError:
                unread += 1
                continue
            record_spec = self._record_spec(record, spec)
            try:
                if record_spec is not None:
                    parts, bases, record_facts = base(record_spec, strategy, True)
                elif record.predicted_retained_pct is not None:
                    # model gone: today's parts on the predicted model's facts, rescaled to the recorded total
                    parts, bases, record_facts = base(spec, strategy, False)
                    from planner.accuracy.residual import rescale_parts

                    parts = rescale_parts(parts, damage_from_retained(record.predicted_retained_pct, scale), priors)
                    notes.append("some records' models could not be read: their recorded predictions were used.")
                else:
                    unread += 1
                    continue
            except (FitplanError, ValueError):  # a strategy today's model cannot predict (e.g. a format removed)
                unread += 1
                continue
            if not parts:
                continue
            observations.append(observation(parts, bases, strategy, record_facts, priors,
                                            damage_from_retained(record.measured_retained_pct, scale), scale,
                                            record.source))
        if unread or unknown_metric:
            notes.append(f"calibration store: {unread + unknown_metric} {facts.family} records not used (strategy or "
                         f"model unreadable: {unread}, unknown metric family: {unknown_metric}).")
        model = fit_residual_model(facts.family, observations, priors)
        if model is not None:
            model.notes.extend(dict.fromkeys(notes))
        self._models[key] = model
        return model

    def corrections(self, spec, *, profile=None) -> list[Correction]:
        """The fitted residual blocks for ``spec`` (a ModelSpec or model name): what the store corrects (the
        residuals are in latent damage units, the same for every metric family)."""
        from planner.accuracy.predict import residual_model_for

        model = residual_model_for(spec, self, profile=profile)
        if model is None:
            return []
        return [Correction(family=model.family, technique=t, basis=b, n=block.n, stacked=block.stacked,
                           coefficients=model.coefficients(t, b), noise_sigma=math.sqrt(model.posterior.sigma2))
                for (t, b), block in model.blocks.items()]

    def device_correction(self, family: str, device: str, quantity: Literal["memory", "latency"],
                          params: float | None = None) -> DeviceCorrection:
        """Measured/predicted factor of ``quantity`` for ``family`` on ``device`` (see the module
        docstring); factor 1 and n = 0 without records. ``params``: only records of models within
        SIZE_FACTOR of this size count. Devices match by name, case and spaces ignored."""
        if quantity not in DEVICE_PRIOR_SD:
            raise ValueError(f"quantity must be 'memory' or 'latency', got {quantity!r}.")
        key = ("device", family, _device_key(device), quantity, params)
        if key not in self._models:
            ratios = []
            for r in self.records:
                if _device_key(r.device) != _device_key(device) or not self.comparable(r, family, params):
                    continue
                pair = ((r.measured_memory_bytes, r.predicted_memory_bytes) if quantity == "memory"
                        else (r.measured_latency_ms, r.predicted_latency_ms))
                if pair[0] and pair[1] and pair[0] > 0:
                    ratios.append(math.log(pair[0] / pair[1]))
            posterior = bayes.fit(np.ones((len(ratios), 1)), np.array(ratios), np.zeros(len(ratios)),
                                  np.array([DEVICE_PRIOR_SD[quantity]]), DEVICE_NOISE[quantity])
            x = np.ones(1)
            self._models[key] = DeviceCorrection(
                family=family, device=device, quantity=quantity, factor=math.exp(posterior.predict(x)[0]),
                log_spread=posterior.normal_spread(x), n=len(ratios))
        return self._models[key]


def _device_key(device: str | None) -> str:
    return " ".join(str(device or "").lower().split())
