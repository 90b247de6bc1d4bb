"""Predictor quality: how well predicted figures agree with measured ones.

:func:`predictor_agreement` compares paired predictions and measurements of one quantity (quality
retained or lost, memory, latency) and returns an :class:`Agreement`:

- ``mae``: mean absolute error ``mean |p_i - m_i|`` (in the quantity's unit);
- ``median_abs_error``: the median of ``|p_i - m_i|`` (robust to one wild candidate);
- ``bias``: mean signed error ``mean (p_i - m_i)`` (positive = the predictor is optimistic for
  quality retained, pessimistic for memory);
- ``spearman``: Spearman's rank correlation (Pearson on average ranks, ties shared;
  ``scipy.stats.spearmanr``): does the predictor *order* the candidates as the measurements do, which is
  what a search needs; ``pearson`` (``scipy.stats.pearsonr``) the linear correlation;
- ``coverage``: share of measurements inside the predicted interval ``[low_i, high_i]`` when intervals are
  given (an 80% interval should cover about 80%), ``mean_width`` their mean width.

Correlations need at least 3 pairs and some spread on both sides (None otherwise, never NaN). Pairs where
the prediction or the measurement is None (not predicted, not measured) are left out and counted in
``skipped``; a NaN or infinite value is an error.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InvalidRequestError

MIN_PAIRS_FOR_CORRELATION = 3


class Agreement(BaseModel):
    """Agreement of predicted and measured values of one quantity (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    n: int = Field(description="pairs compared")
    skipped: int = Field(0, description="pairs left out because a value was None")
    mae: float | None = Field(description="mean absolute error, the quantity's unit")
    median_abs_error: float | None
    bias: float | None = Field(description="mean of predicted - measured")
    spearman: float | None = Field(description="Spearman rank correlation (None: < 3 pairs or no spread)")
    pearson: float | None = Field(description="Pearson correlation (None: < 3 pairs or no spread)")
    coverage: float | None = Field(None, description="share of measured values inside [low, high]")
    mean_width: float | None = Field(None, description="mean width of the intervals")

    def summary(self) -> str:
        if not self.n:
            return "no measured candidates to compare"
        parts = [f"n={self.n}", f"MAE {self.mae:.3g}"]
        if self.spearman is not None:
            parts.append(f"Spearman {self.spearman:.2f}")
        if self.coverage is not None:
            parts.append(f"interval coverage {self.coverage:.0%}")
        return ", ".join(parts)


def _checked(name: str, values: Sequence[float | None] | None, n: int | None) -> list[float | None] | None:
    if values is None:
        return None
    values = list(values)
    if n is not None and len(values) != n:
        raise InvalidRequestError(f"{name} has {len(values)} values, predicted has {n}: pass one per candidate.")
    for value in values:
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise InvalidRequestError(f"{name} holds {value!r}: values must be finite numbers (None = not "
                                      "available).")
    return values


def _correlation(kind: str, x: list[float], y: list[float]) -> float | None:
    if len(x) < MIN_PAIRS_FOR_CORRELATION or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = (stats.spearmanr(x, y) if kind == "spearman" else stats.pearsonr(x, y))[0]
    value = float(value)
    return value if math.isfinite(value) else None


def predictor_agreement(predicted: Sequence[float | None], measured: Sequence[float | None], *,
                        low: Sequence[float | None] | None = None,
                        high: Sequence[float | None] | None = None) -> Agreement:
    """Agreement of ``predicted`` with ``measured`` (same length, one per candidate); ``low`` / ``high``:
    the predicted intervals (both or neither)."""
    predicted = _checked("predicted", predicted, None)
    assert predicted is not None
    measured = _checked("measured", measured, len(predicted))
    low, high = _checked("low", low, len(predicted)), _checked("high", high, len(predicted))
    if (low is None) != (high is None):
        raise InvalidRequestError("give both low and high (the predicted interval) or neither.")
    keep = [i for i in range(len(predicted)) if predicted[i] is not None and measured[i] is not None]
    p = [float(predicted[i]) for i in keep]
    m = [float(measured[i]) for i in keep]
    skipped = len(predicted) - len(keep)
    if not keep:
        return Agreement(n=0, skipped=skipped, mae=None, median_abs_error=None, bias=None, spearman=None,
                         pearson=None)
    errors = [a - b for a, b in zip(p, m)]
    coverage = width = None
    if low is not None and high is not None:
        bounded = [i for i in keep if low[i] is not None and high[i] is not None]
        if bounded:
            coverage = sum(min(low[i], high[i]) <= measured[i] <= max(low[i], high[i]) for i in bounded) / len(bounded)
            width = statistics.fmean(abs(high[i] - low[i]) for i in bounded)
    return Agreement(n=len(keep), skipped=skipped, mae=statistics.fmean(abs(e) for e in errors),
                     median_abs_error=statistics.median(abs(e) for e in errors), bias=statistics.fmean(errors),
                     spearman=_correlation("spearman", p, m), pearson=_correlation("pearson", p, m),
                     coverage=coverage, mean_width=width)
