"""Priors: published compression effects as data, and the log-linear rules fitted to them.

``planner/data/accuracy_priors.toml`` holds the sourced observations (``[[rows]]``, one per cited
number of COMPRESSION_PRIORS section c), the features of each technique's rule and a prior on each
coefficient. :func:`load_priors` validates the file and fits every rule once (ridge least squares in
log-damage space, a few ms), so a rule can never drift from the rows it cites:

    ln d = x . b  (+ ln fraction),   b = argmin |X b + off - y|^2 + sum_j lambda_j (b_j - mu_j)^2

``d`` is the latent damage in log-perplexity units (:mod:`planner.accuracy.metrics`). The 80% interval
of a prediction is ``ln d +- 1.2816 * s`` with ``s^2 = sigma^2 (1 + x (X'WX + Lambda)^-1 x')``:
sigma is the rule's residual scatter (at least ``min_sigma``), the leverage term the uncertainty of
the fit where the rows are thin; the interval uses Student's t at the residual degrees of freedom
(:func:`t90`) rather than the normal quantile. Rows are weighted by ``sigma^2 / (sigma^2 + (tau_i/d_i)^2)``, tau_i
the resolution of the cited figure (:func:`row_noise`), so rounded near-lossless figures count little. :func:`fit_rules` refits on any subset of rows (the leave-one-row-out
benchmark uses it).

Extrapolation guards (per technique, in the data file): ``clamp`` holds named features within the range
of the fitted rows (outside it the estimate stays at the edge and the spread grows by the shift the
unclamped rule would have made), and ``saturation`` bounds the damage, ``d = 1 / (1/d_lin + 1/D)``,
fitted on the inverted targets. The structure rule (students and heads / FFN / layer removal) uses
both: its cited rows cover 110M-70B parameters, so a 4M-parameter model is predicted as a 110M one with
a wider interval rather than extrapolated to ~0% retained.
"""

from __future__ import annotations

import math
import re
from functools import cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from planner._data import read_data_toml
from planner.accuracy.metrics import DAMAGE_FLOOR, damage_from_retained
from planner.errors import InvalidConfigError

SCHEMA_VERSION = 1
Z80 = 1.2815515655446004
TECHNIQUES: tuple[str, ...] = ("quantization", "sparsity", "structure", "low_rank")


class _Data(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricDef(_Data):
    scale: float = Field(gt=0)
    description: str
    source: str
    verified: bool = True


class CoefficientPrior(_Data):
    mean: float
    strength: float = Field(ge=0)
    source: str


class SaturationDef(_Data):
    max_damage: float = Field(gt=0)
    source: str


class TechniqueDef(_Data):
    description: str
    min_sigma: float = Field(gt=0)
    prior: dict[str, CoefficientPrior]
    clamp: dict[str, Literal["both", "above", "below"]] = Field(default_factory=dict)
    """coefficient -> side(s) on which its feature is held within the range of the fitted rows (the
    interval widens outside)"""
    saturation: SaturationDef | None = None
    """damage bound: d = 1 / (1/d_linear + 1/max_damage)"""


class InteractionDef(_Data):
    gamma: float = Field(ge=0)
    sigma_per_pair: float = Field(ge=0)
    source: str


class PretrainEntry(_Data):
    pattern: str
    tokens: float = Field(gt=0)
    source: str


class PretrainingDef(_Data):
    default_tokens_per_param: float = Field(gt=0)
    default_source: str
    reference_params: float = Field(gt=0)
    reference_tokens_per_param: float = Field(gt=0)
    models: tuple[PretrainEntry, ...]


class QuantFormatPrior(_Data):
    qb: float | None = Field(None, gt=0, description="quality bits")
    method: str | None = None
    lossless: bool = False

    @model_validator(mode="after")
    def _complete(self) -> "QuantFormatPrior":
        if not self.lossless and (self.qb is None or self.method is None):
            raise ValueError("a lossy format needs qb and method")
        return self


class PriorRow(_Data):
    """One cited observation."""

    id: str
    technique: Literal["quantization", "sparsity", "structure", "low_rank"]
    kind: Literal["point", "bound"] = "point"
    setting: dict[str, str | float | int]
    model: str
    params: float = Field(gt=0)
    pretrain_tokens: float = Field(gt=0)
    metric: Literal["accuracy", "perplexity", "embedding"]
    baseline: float | None = Field(None, gt=0)
    compressed: float | None = Field(None, gt=0)
    retained_pct: float | None = Field(None, gt=0)
    retained_low_pct: float | None = Field(None, gt=0)
    retained_high_pct: float | None = Field(None, gt=0)
    retained_min_pct: float | None = Field(None, gt=0)
    source: str
    verified: bool = True
    fit: bool = True

    @model_validator(mode="after")
    def _quality_given(self) -> "PriorRow":
        if self.kind == "bound":
            if self.retained_min_pct is None:
                raise ValueError(f"row {self.id}: a bound row needs retained_min_pct")
        elif self.retained_pct is None and (self.baseline is None or self.compressed is None):
            raise ValueError(f"row {self.id}: give baseline and compressed, or retained_pct")
        return self

    @property
    def cited_retained_pct(self) -> float:
        """The cited quality retained, % on the row's own metric."""
        if self.retained_pct is not None:
            return self.retained_pct
        assert self.baseline is not None and self.compressed is not None
        if self.metric == "perplexity":
            return 100.0 * self.baseline / self.compressed
        return 100.0 * self.compressed / self.baseline


class PriorsFile(_Data):
    schema_version: int
    metrics: dict[str, MetricDef]
    pretraining: PretrainingDef
    techniques: dict[str, TechniqueDef | InteractionDef]
    quantization: dict[str, dict[str, str | QuantFormatPrior]]
    rows: tuple[PriorRow, ...]


# ------------------------------------------------------------------------------------------------
# Features of each technique's rule
# ------------------------------------------------------------------------------------------------
def _quant_methods(data: PriorsFile) -> tuple[str, ...]:
    return tuple(m for m in data.quantization["methods"] if m != "rtn")


def coefficient_names(technique: str, data: PriorsFile) -> tuple[str, ...]:
    if technique == "quantization":
        return ("intercept", "slope", "extra_low", "size", "tokens") + tuple(
            f"method:{m}" for m in _quant_methods(data))
    if technique == "sparsity":
        return ("intercept", "level", "pattern:2:4", "pattern:4:8", "method:magnitude", "method:sparsegpt",
                "size", "tokens", "recovery", "magnitude_size")
    if technique == "structure":
        return ("intercept", "removed", "recovery", "size", "collapse")
    if technique == "low_rank":
        return ("intercept", "removed")
    raise ValueError(f"unknown technique {technique!r}")


def _size_tokens(params: float, tokens_per_param: float, ref: PretrainingDef) -> tuple[float, float]:
    return math.log(params / ref.reference_params), math.log(tokens_per_param / ref.reference_tokens_per_param)


def quant_features(qb: float, method: str, params: float, tpp: float, data: PriorsFile) -> list[float]:
    size, tokens = _size_tokens(params, tpp, data.pretraining)
    return [1.0, qb - 4.0, min(qb - 4.0, 0.0), size, tokens] + [1.0 if method == m else 0.0
                                                                 for m in _quant_methods(data)]


def sparsity_features(level: float, pattern: str, method: str, params: float, tpp: float,
                      recovery_tokens: float, data: PriorsFile) -> list[float]:
    size, tokens = _size_tokens(params, tpp, data.pretraining)
    return [1.0, math.log(level / (1.0 - level)), float(pattern == "2:4"), float(pattern == "4:8"),
            float(method == "magnitude"), float(method == "sparsegpt"), size, tokens,
            math.log1p(recovery_tokens / params), size * float(method == "magnitude")]


def structure_features(kept: float, recovery_tokens: float, params: float, data: PriorsFile) -> list[float]:
    """[1, ln r, T, ln(N / 7e9), -ln(1 - r) exp(-T)]: r = 1 - kept, the removed fraction of the block
    parameters, and T = ln(1 + recovery tokens / N). Without training (T = 0, both shape coefficients
    ~1) the damage grows like r / (1 - r): nothing as r -> 0, collapse as r -> 1. Training both scales
    it down (``recovery`` < 0) and lifts the collapse term (exp(-T)): a trained student's damage grows
    only like r (students keeping 5% of the blocks retain ~97%). Monotone in r and in T for positive
    ``removed`` and ``collapse`` and negative ``recovery``; the saturation bounds it from above."""
    kept = min(max(kept, 1e-3), 1 - 1e-6)
    recovery = math.log1p(recovery_tokens / params)
    return [1.0, math.log(1.0 - kept), recovery, math.log(params / data.pretraining.reference_params),
            -math.log(kept) * math.exp(-recovery)]


def structure_recovery_log_factor(kept: float, recovery_tokens: float, params: float, priors: "Priors") -> float:
    """ln of the factor by which ``recovery_tokens`` of training scale the structure rule's (linear)
    damage at this removed fraction: the recovery terms of the rule, with its clamps. For scaling a
    measured one-shot effect (e.g. a profile's block drops) by the training that follows."""
    rule = priors.rules["structure"]
    trained = np.clip(structure_features(kept, recovery_tokens, params, priors.data), rule.lower, rule.upper)
    one_shot = np.clip(structure_features(kept, 0.0, params, priors.data), rule.lower, rule.upper)
    return float((trained - one_shot) @ rule.coef)


def low_rank_features(kept: float) -> list[float]:
    kept = min(max(kept, 1e-3), 1 - 1e-6)
    return [1.0, math.log((1.0 - kept) / kept)]


def row_features(row: PriorRow, data: PriorsFile) -> tuple[list[float], float]:
    """Features of a cited row and its known offset (ln of the share of weights it compresses)."""
    s = row.setting
    tpp = row.pretrain_tokens / row.params
    fraction = float(s.get("fraction", 1.0))
    if row.technique == "quantization":
        fmt = data.quantization["formats"][str(s["format"])]
        assert isinstance(fmt, QuantFormatPrior) and fmt.qb is not None and fmt.method is not None
        return quant_features(fmt.qb, fmt.method, row.params, tpp, data), math.log(fraction)
    if row.technique == "sparsity":
        return sparsity_features(float(s["level"]), str(s["pattern"]), str(s["method"]), row.params, tpp,
                                 float(s.get("recovery_tokens", 0.0)), data), math.log(fraction)
    if row.technique == "structure":
        return structure_features(float(s["kept"]), float(s.get("recovery_tokens", 0.0)), row.params, data), 0.0
    return low_rank_features(float(s["kept"])), math.log(fraction)


def row_damage(row: PriorRow, data: PriorsFile) -> float:
    """Latent damage of a cited point row (log-perplexity units, floored)."""
    return damage_from_retained(row.cited_retained_pct, data.metrics[row.metric].scale)


# ------------------------------------------------------------------------------------------------
# Fitted rules
# ------------------------------------------------------------------------------------------------
class Rule:
    """A fitted log-linear rule of one technique.

    ``lower``/``upper`` hold the clamped features within the range the fitted rows span: outside it the
    estimate stays at the edge and the spread grows by the shift the unclamped rule would have made,
    ``|b| . |x - clamp(x)|`` (added to it). ``max_damage`` D bounds the damage,
    ``d = 1 / (1/d_lin + 1/D)``: monotone, ~``d_lin`` for small damage, never above D."""

    def __init__(self, technique: str, names: tuple[str, ...], coef: np.ndarray, cov_unit: np.ndarray,
                 sigma: float, n_rows: int, row_ids: tuple[str, ...], dof: float = math.inf,
                 lower: np.ndarray | None = None, upper: np.ndarray | None = None,
                 max_damage: float | None = None):
        self.dof = dof
        self.t_ratio = t90(dof) / Z80
        """Student-t over normal 80% quantile at the fit's residual degrees of freedom: folded into the
        returned spread so that +-Z80 spreads give a t interval."""
        self.technique = technique
        self.names = names
        self.coef = coef
        self.cov_unit = cov_unit
        self.sigma = sigma
        self.n_rows = n_rows
        self.row_ids = row_ids
        self.lower = np.full(len(names), -np.inf) if lower is None else lower
        self.upper = np.full(len(names), np.inf) if upper is None else upper
        self.max_damage = max_damage

    def predict_log(self, features: list[float]) -> tuple[float, float]:
        """(median ln d, predictive standard deviation of ln d) at these features."""
        x = np.asarray(features, dtype=float)
        held = np.clip(x, self.lower, self.upper)
        mu = float(held @ self.coef)
        s = self.sigma * self.t_ratio * math.sqrt(1.0 + float(held @ self.cov_unit @ held))
        s = s + float(np.abs(self.coef) @ np.abs(x - held))
        if self.max_damage is None:
            return mu, s
        return saturate(mu, s, self.max_damage)

    def extrapolated(self, features: list[float]) -> tuple[str, ...]:
        """Names of the features outside the fitted rows' range (held at its edge)."""
        x = np.asarray(features, dtype=float)
        return tuple(n for n, v, lo, hi in zip(self.names, x, self.lower, self.upper) if v < lo or v > hi)

    def coefficients(self) -> dict[str, float]:
        return dict(zip(self.names, (float(c) for c in self.coef)))


def saturate(mu: float, s: float, max_damage: float) -> tuple[float, float]:
    """ln d and spread of ``d = 1 / (1/d_lin + 1/D)`` for ``ln d_lin ~ (mu, s)``. The spread is set so
    that the optimistic 80% end (least damage) is the exact image of the linear one; the pessimistic end
    is then wider than its image (the map compresses large damage)."""
    def sat(v: float) -> float:
        return v - math.log1p(math.exp(min(v, 700.0)) / max_damage)
    centre = sat(mu)
    return centre, (centre - sat(mu - Z80 * s)) / Z80


def unsaturate(damage: float, max_damage: float) -> float:
    """Inverse of the saturation: the linear damage whose bounded value is ``damage`` (< D)."""
    damage = min(damage, 0.95 * max_damage)
    return 1.0 / (1.0 / damage - 1.0 / max_damage)


def _prior_for(name: str, technique: TechniqueDef) -> CoefficientPrior:
    key = name.split(":", 1)[0]
    try:
        return technique.prior[key]
    except KeyError:
        raise InvalidConfigError(f"accuracy_priors.toml: technique has no prior for coefficient {key!r}.") from None


def _decimals(value: float) -> int:
    text = repr(float(value))
    if "e" in text:
        return 6
    return len(text.split(".")[1].rstrip("0")) if "." in text else 0


def row_noise(row: PriorRow, data: PriorsFile) -> float:
    """Absolute noise of a row's latent damage from its resolution: half a unit in the last cited digit
    of the compressed metric, half the cited range, or 0.05 points of a cited percentage."""
    scale = data.metrics[row.metric].scale
    if row.retained_low_pct is not None and row.retained_high_pct is not None:
        return (row.retained_high_pct - row.retained_low_pct) / 2 / 100 / scale
    if row.retained_pct is not None:
        return 0.5 * 10 ** -max(_decimals(row.retained_pct), 1) / 100 / scale
    assert row.compressed is not None
    return 0.5 * 10 ** -_decimals(row.compressed) / row.compressed / scale


def t90(dof: float) -> float:
    """0.9 quantile of Student's t (Cornish-Fisher expansion; exact to ~1e-3 for dof >= 2)."""
    if not math.isfinite(dof):
        return Z80
    dof = max(dof, 1.0)
    z = Z80
    return z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)


def fit_rule(technique: str, rows: list[PriorRow], data: PriorsFile) -> Rule:
    """Weighted ridge fit of one technique's rule on these point rows (see the module docstring).

    Row i has log-variance sigma^2 + (tau_i / d_i)^2, tau_i = :func:`row_noise`: rounded near-lossless
    figures weigh little. sigma is re-estimated until the weighted residuals match their
    degrees of freedom (a few fixed-point steps)."""
    definition = data.techniques[technique]
    assert isinstance(definition, TechniqueDef)
    names = coefficient_names(technique, data)
    priors = [_prior_for(n, definition) for n in names]
    mean = np.array([p.mean for p in priors])
    strength = np.diag([p.strength for p in priors])
    used = [r for r in rows if r.technique == technique and r.kind == "point" and r.fit]
    if used:
        X = np.array([row_features(r, data)[0] for r in used])
        offset = np.array([row_features(r, data)[1] for r in used])
        damage = np.array([row_damage(r, data) for r in used])
        tau = np.array([row_noise(r, data) for r in used])
        if definition.saturation is not None:
            bound = definition.saturation.max_damage
            linear = np.array([unsaturate(d, bound) for d in damage])
            # relative resolution tau/d carried through the inverse map: d ln d_lin / d ln d = D / (D - d)
            tau = tau * linear / damage * bound / (bound - np.minimum(damage, 0.95 * bound))
            damage = linear
        y = np.log(damage) - offset
    else:
        X, y, damage, tau = np.zeros((0, len(names))), np.zeros(0), np.zeros(0), np.zeros(0)
    n = len(used)
    sigma = definition.min_sigma
    p_eff = 0.0
    for _ in range(8):
        weights = sigma ** 2 / (sigma ** 2 + (tau / damage) ** 2) if n else np.zeros(0)
        XtW = X.T * weights
        A_inv = np.linalg.pinv(XtW @ X + strength)
        coef = A_inv @ (XtW @ y + strength @ mean)
        if not n:
            break
        residual = y - X @ coef
        p_eff = float(np.trace(X @ A_inv @ XtW))
        excess = residual ** 2 - (tau / damage) ** 2
        new_sigma = math.sqrt(max(float(np.sum(weights * np.maximum(excess, 0.0))) /
                                  max(float(np.sum(weights)) * (n - p_eff) / n, 1e-9), 0.0))
        new_sigma = max(new_sigma, definition.min_sigma)
        if abs(new_sigma - sigma) < 1e-4:
            sigma = new_sigma
            break
        sigma = new_sigma
    dof = max(n - p_eff, 1.0) if n else math.inf
    lower, upper = np.full(len(names), -np.inf), np.full(len(names), np.inf)
    for j, name in enumerate(names):
        side = definition.clamp.get(name)
        if side and n:
            if side in ("both", "below"):
                lower[j] = X[:, j].min()
            if side in ("both", "above"):
                upper[j] = X[:, j].max()
    return Rule(technique, names, coef, A_inv, sigma, n, tuple(r.id for r in used), dof, lower, upper,
                definition.saturation.max_damage if definition.saturation else None)


def fit_rules(rows: list[PriorRow], data: PriorsFile) -> dict[str, Rule]:
    return {t: fit_rule(t, rows, data) for t in TECHNIQUES}


class Priors:
    """The validated priors file with its fitted rules (one per technique)."""

    def __init__(self, data: PriorsFile, rules: dict[str, Rule]):
        self.data = data
        self.rules = rules
        self._patterns = [(re.compile(e.pattern, re.IGNORECASE), e) for e in data.pretraining.models]
        self.interaction = data.techniques["interaction"]
        assert isinstance(self.interaction, InteractionDef)

    def metric_scale(self, metric: str) -> float:
        return self.data.metrics[metric].scale

    def quant_format(self, name: str) -> QuantFormatPrior | None:
        fmt = self.data.quantization["formats"].get(name)
        return fmt if isinstance(fmt, QuantFormatPrior) else None

    def pretraining_tokens(self, name: str, model_type: str) -> tuple[float | None, str]:
        """Pretraining tokens of a model by name (else model_type) and the source; None if unknown."""
        for text in (name, model_type):
            for pattern, entry in self._patterns:
                if pattern.search(text):
                    return entry.tokens, entry.source
        return None, ""

    def predict_row(self, row: PriorRow, *, include_row_noise: bool = False) -> tuple[float, float, float]:
        """(median, low, high) quality retained the fitted rule predicts for a cited row, % on the
        row's own metric, 80% interval. ``include_row_noise`` widens it by the row's resolution."""
        features, offset = row_features(row, self.data)
        mu, s = self.rules[row.technique].predict_log(features)
        mu += offset
        if include_row_noise:
            s = math.sqrt(s * s + (row_noise(row, self.data) / math.exp(mu)) ** 2)
        scale = self.metric_scale(row.metric)
        shown = [100.0 * math.exp(-scale * math.exp(mu + z * s)) for z in (0.0, Z80, -Z80)]
        return shown[0], shown[1], shown[2]

    def with_rows(self, rows: list[PriorRow]) -> "Priors":
        """The same priors refitted on a subset of rows (leave-one-out)."""
        return Priors(self.data, fit_rules(rows, self.data))


def _validate(raw: dict) -> PriorsFile:
    from pydantic import ValidationError

    quantization = raw.get("quantization", {})
    try:
        formats = {name: QuantFormatPrior.model_validate(v) for name, v in quantization.get("formats", {}).items()}
        techniques = {name: (InteractionDef if name == "interaction" else TechniqueDef).model_validate(v)
                      for name, v in raw.get("techniques", {}).items()}
        data = PriorsFile.model_validate({**raw, "techniques": techniques,
                                          "quantization": {"methods": quantization.get("methods", {}),
                                                           "formats": formats}})
    except ValidationError as error:
        raise InvalidConfigError(f"accuracy_priors.toml: {error}") from None
    methods = data.quantization["methods"]
    for name, fmt in formats.items():
        if fmt.method is not None and fmt.method not in methods:
            raise InvalidConfigError(f"accuracy_priors.toml: format {name} names unknown method {fmt.method!r}.")
    for name, technique in data.techniques.items():
        if isinstance(technique, TechniqueDef) and name in TECHNIQUES:
            unknown = set(technique.clamp) - set(coefficient_names(name, data))
            if unknown:
                raise InvalidConfigError(f"accuracy_priors.toml: techniques.{name}.clamp names unknown coefficients "
                                         f"{sorted(unknown)}; allowed: {', '.join(coefficient_names(name, data))}.")
    ids = [r.id for r in data.rows]
    if len(ids) != len(set(ids)):
        raise InvalidConfigError("accuracy_priors.toml: duplicate row ids.")
    for row in data.rows:
        if row.technique == "quantization" and str(row.setting.get("format")) not in formats:
            raise InvalidConfigError(f"accuracy_priors.toml: row {row.id} names unknown format "
                                     f"{row.setting.get('format')!r}.")
    return data


@cache
def load_priors() -> Priors:
    """The packaged priors, validated and fitted once per process."""
    data = _validate(read_data_toml("accuracy_priors.toml", SCHEMA_VERSION))
    return Priors(data, fit_rules(list(data.rows), data))


__all__ = ["DAMAGE_FLOOR", "Priors", "PriorRow", "Rule", "Z80", "fit_rule", "fit_rules", "load_priors",
           "row_damage", "row_features", "row_noise", "saturate", "structure_recovery_log_factor"]
