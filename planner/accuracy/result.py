"""Typed results of the accuracy model: :class:`QualityPrediction` and its :class:`QualityPart` rows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Basis = Literal["prior", "profile", "calibrated"]


class QualityPart(BaseModel):
    """The predicted effect of one strategy part (quantization, sparsity, low-rank, structure)."""

    model_config = ConfigDict(frozen=True)

    technique: Literal["quantization", "sparsity", "low_rank", "structure"]
    setting: str = Field(description="what the part does, e.g. 'nf4' or '0.5 unstructured wanda'")
    retained_pct: float = Field(description="quality retained by this part alone, % of the uncompressed model")
    low_pct: float = Field(description="lower end of the 80% interval")
    high_pct: float = Field(description="upper end of the 80% interval")
    basis: Literal["prior", "profile", "calibrated"]
    n_measurements: int = Field(description="rows (prior), profile entries or calibration records behind it")
    source: str = Field(description="id of the rule or file the number comes from")


class QualityPrediction(BaseModel):
    """Predicted quality retained by a compressed model, % of the uncompressed model, with its 80%
    interval and where it came from."""

    model_config = ConfigDict(frozen=True)

    retained_pct: float = Field(description="median prediction of quality retained, % (100 = no loss)")
    low_pct: float = Field(description="lower end of the 80% interval, %")
    high_pct: float = Field(description="upper end of the 80% interval, %")
    basis: Literal["prior", "profile", "calibrated"] = Field(
        description="prior = published rules only; profile = this model's sensitivity profile; calibrated = "
        "priors (or the profile) corrected by measured results of this model family (residual model of "
        "planner.accuracy.residual)")
    n_measurements: int = Field(description="measurements behind the number (rows, profile entries, records)")
    metric: Literal["accuracy", "perplexity", "embedding"] = Field(
        description="metric family the percentage is expressed in (see planner.accuracy.metrics)")
    parts: tuple[QualityPart, ...] = ()
    interaction_pct: float = Field(0.0, description="quality lost to the interaction of stacked parts, "
                                   "percentage points (already included in retained_pct)")
    notes: tuple[str, ...] = ()

    @property
    def loss_pct(self) -> float:
        """Quality lost, % of the uncompressed model (100 - retained_pct)."""
        return 100.0 - self.retained_pct

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low_pct, self.high_pct)

    def summary(self) -> str:
        return (f"{self.retained_pct:.1f}% [{self.low_pct:.1f}, {self.high_pct:.1f}] ({self.basis}, "
                f"n={self.n_measurements})")
