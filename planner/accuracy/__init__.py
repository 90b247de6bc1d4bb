"""The accuracy model: predicted quality retained by a compressed model, with interval and basis.

``predict_quality(spec, strategy, profile=None, calibration=None)`` -> :class:`QualityPrediction`.
Priors (published effects, :mod:`.priors`, data in ``planner/data/accuracy_priors.toml``), a model's
sensitivity profile (:mod:`.profile`) and a store of measured results (:mod:`.calibration`) feed one
combination rule (:mod:`.combine`); metric families share one scale (:mod:`.metrics`). Measured records
correct the predictions through a Bayesian residual model (:mod:`.residual`, :mod:`.bayes`);
:func:`predictor_agreement` (:mod:`.agreement`) scores predictions against measurements.
"""

from planner.accuracy.agreement import Agreement, predictor_agreement
from planner.accuracy.calibration import CalibrationRecord, CalibrationStore, Correction, DeviceCorrection
from planner.accuracy.metrics import METRIC_FAMILIES, MetricFamily, metric_family
from planner.accuracy.predict import predict_quality
from planner.accuracy.priors import Priors, load_priors
from planner.accuracy.profile import SensitivityProfile, model_fingerprint, sparsity_option
from planner.accuracy.result import QualityPart, QualityPrediction

__all__ = ["Agreement", "CalibrationRecord", "CalibrationStore", "Correction", "DeviceCorrection",
           "METRIC_FAMILIES", "MetricFamily", "Priors", "QualityPart", "QualityPrediction",
           "SensitivityProfile", "load_priors", "metric_family", "model_fingerprint", "predict_quality",
           "predictor_agreement", "sparsity_option"]
