"""What did not fit in a :func:`planner.sizing.what_fits` answer, and why, in one line."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

REASON_CHARS = 70  # the line quotes one reason, cut to this (every reason is whole in cannot_run and --json)


class TooLarge(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    smallest_gib: float
    precision: str


class CannotRun(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    reason: str


class NotFitting(BaseModel):
    """Models of a ``what_fits`` answer (one GPU) with no fitting row: too large in every format they can
    run in (``too_large``, smallest first), or no format that runs (``cannot_run``)."""

    model_config = ConfigDict(frozen=True)

    models: int
    fitting: int
    usable_gib: float
    too_large: tuple[TooLarge, ...]
    cannot_run: tuple[CannotRun, ...]

    def line(self) -> str:
        """'22 of 73 did not fit: 20 too large even in their smallest format (closest: X needs 17.2 GiB in
        nf4), 2 cannot run (Y: reason)'; '' when everything fits."""
        missing = self.models - self.fitting
        if not missing:
            return ""
        parts = []
        if self.too_large:
            near = self.too_large[0]
            parts.append(f"{len(self.too_large)} too large even in their smallest format (closest: {near.model} "
                         f"needs {near.smallest_gib:,.1f} GiB in {near.precision})")
        if self.cannot_run:
            first = self.cannot_run[0]
            reason = first.reason.removeprefix(f"{first.model}: ")
            reason = reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 1] + "…"
            parts.append(f"{len(self.cannot_run)} cannot run ({first.model}: {reason})")
        return f"{missing} of {self.models} did not fit: " + "; ".join(parts)


def not_fitting(rows: dict[str, Any]) -> NotFitting:
    """Summarise the rows of one GPU (``what_fits`` columns as arrays: model, precision, fits, supported,
    safe_gib, usable_gib, note)."""
    best: dict[str, tuple[float, str]] = {}
    reasons: dict[str, str] = {}
    fitting: set[str] = set()
    for model, precision, fits, supported, safe, note in zip(rows["model"], rows["precision"], rows["fits"],
                                                             rows["supported"], rows["safe_gib"], rows["note"]):
        model = str(model)
        if fits:
            fitting.add(model)
            continue
        runnable = supported is not False and safe is not None and math.isfinite(float(safe))
        if runnable:
            if model not in best or float(safe) < best[model][0]:
                best[model] = (float(safe), str(precision))
        elif note:
            reasons.setdefault(model, str(note))
    models = list(dict.fromkeys(str(m) for m in rows["model"]))
    too_large = sorted((TooLarge(model=m, smallest_gib=best[m][0], precision=best[m][1])
                        for m in models if m not in fitting and m in best), key=lambda t: t.smallest_gib)
    cannot = tuple(CannotRun(model=m, reason=reasons.get(m, "no format runs here"))
                   for m in models if m not in fitting and m not in best)
    usable = float(rows["usable_gib"][0]) if len(rows["usable_gib"]) else math.nan
    return NotFitting(models=len(models), fitting=len(fitting), usable_gib=usable, too_large=tuple(too_large),
                      cannot_run=cannot)
