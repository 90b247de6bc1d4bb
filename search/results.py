"""The result of a search, rebuilt from its Optuna study alone.

:class:`SearchResult` holds every trial as a DataFrame and the ranked trade-off table:

``TABLE_COLUMNS`` (documented in search.candidates) then ``MEASURED_COLUMNS`` (search.measured) — rank 1
is the best feasible candidate: feasible candidates come first, ordered by Pareto layer (non-dominated
sorting over the study's objectives) and then by the first objective; infeasible ones follow, least
violating first. ``pareto`` is the first layer. Equal strategies proposed twice (several workers, or the
sampler repeating itself) appear once.

The uncompressed model (the identity strategy, summary ``baseline``) is the **reference** every
candidate is measured against, not a candidate: when a trial proposed it, or the closed loop stored its
measured run, it is the first row with rank 0, ``reference`` True and the strategy shown as
``baseline (reference)``; it is not on the Pareto front and is never ranked against the candidates.
The recommendation (:attr:`SearchResult.best`) is a compressed candidate whenever one is feasible; the
reference is recommended only when it meets every constraint and no compressed candidate does, and then
:attr:`SearchResult.no_compression_needed` is True, so the CLI, the lab and the report say "no
compression needed" instead of presenting the uncompressed model as a compression strategy.

A closed-loop search (search.loop) adds, from the study's attributes: each strategy's latest (re-scored)
prediction in place of the one its trial made; the measured columns; and measurements in the verdict:
a candidate measured ok is ranked on its measured quality loss, memory and latency (the objectives that
have a measured counterpart), is feasible when its measured figures satisfy the constraints (``verified``)
and infeasible with the measured reason when they do not; a candidate whose run failed for real is kept
with ``measured_status = "failed: <reason>"``, infeasible and ranked last, so it is never recommended.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from search.candidates import TABLE_COLUMNS, table_row
from search.measured import MEASURED_COLUMNS, RoundReport
from search.objective import trial_record

if TYPE_CHECKING:
    import optuna
    import pandas as pd

REFERENCE_LABEL = "baseline (reference)"
"""The strategy cell of the reference row (the uncompressed model; column ``reference`` True, rank 0)."""


class SearchResult(BaseModel):
    """Trials, the ranked trade-off table and the Pareto front of one study (see module docstring)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    study_name: str
    request: dict[str, Any]
    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    trials: Any  # pd.DataFrame: one row per trial (number, state, objective values, table columns)
    table: Any  # pd.DataFrame: TABLE_COLUMNS, one row per distinct strategy, ranked
    n_trials: int
    n_complete: int
    n_failed: int
    interrupted: bool = False
    resumed: bool = False
    evaluations: int = 0
    rounds: list[RoundReport] = []  # closed loop: one report per round (search.measured.RoundReport)
    # Per table row (by strategy_json): the objective values it is ranked on (measured where measured, in
    # the objectives' own directions) and its constraint violation (0 = feasible; inf = failed for real).
    ranking: dict[str, tuple[list[float], float]] = {}

    @property
    def pareto(self) -> "pd.DataFrame":
        """The feasible non-dominated candidates (Pareto layer 1)."""
        return self.table[self.table["pareto"]]

    @property
    def measured(self) -> "pd.DataFrame":
        """The rows executed for real (ok or failed), in rank order."""
        return self.table[self.table["measured_status"].notna()]

    def _feasible(self) -> "tuple[pd.DataFrame, pd.DataFrame]":
        """(feasible compressed candidates, the reference row when it is feasible), in rank order."""
        feasible = self.table[self.table["feasible"].astype(bool)]
        reference = reference_mask(feasible)
        return feasible[~reference], feasible[reference]

    @property
    def best(self) -> dict[str, Any] | None:
        """The recommendation: the best *verified* compressed candidate (measured, every constraint met)
        when one exists, else the rank-1 feasible candidate (predicted only); when no compressed candidate
        is feasible, the uncompressed reference if it meets every constraint (:attr:`no_compression_needed`);
        None when nothing is feasible."""
        candidates, reference = self._feasible()
        if candidates.empty:
            return None if reference.empty else reference.iloc[0].to_dict()
        verified = candidates[candidates["verified"].fillna(False).astype(bool)]
        return (verified if not verified.empty else candidates).iloc[0].to_dict()

    def nearest_misses(self, count: int = 3) -> list[tuple[str, str]]:
        """(strategy, what it violates) of the ``count`` least-violating infeasible compressed candidates, in
        rank order: what to relax when nothing is feasible (a run that failed for real is not a near miss)."""
        table = self.table
        infeasible = table[~table["feasible"].astype(bool) & ~reference_mask(table)]
        if "measured_status" in infeasible:
            status = infeasible["measured_status"].astype(str)
            infeasible = infeasible[~status.str.startswith("failed")]
        return [(str(row["strategy"]), str(row["why_not"])) for _, row in infeasible.head(count).iterrows()]

    @property
    def no_compression_needed(self) -> bool:
        """The recommendation is the uncompressed model: it meets every constraint, no compressed candidate does."""
        best = self.best
        return best is not None and bool(best.get("reference"))

    @property
    def best_is_verified(self) -> bool:
        """The recommendation is verified and no unmeasured candidate is ranked above it."""
        candidates, reference = self._feasible()
        top = candidates if not candidates.empty else reference
        return not top.empty and bool(top.iloc[0]["verified"])

    # -- export -------------------------------------------------------------------------------------

    def to_csv(self, path: str | Path | None = None) -> str:
        text = self.table.to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        payload = {"study": self.study_name, "request": self.request, "objectives": list(self.objectives),
                   "trials": self.n_trials, "complete": self.n_complete, "failed": self.n_failed,
                   "interrupted": self.interrupted, "rounds": [r.model_dump(mode="json") for r in self.rounds],
                   "table": _records(self.table)}
        text = json.dumps(payload, indent=2, default=str)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self, path: str | Path | None = None, top: int | None = None) -> str:
        """The table's main columns as Markdown within 80 columns (search.table_markdown); every column
        is in :meth:`to_csv` and :meth:`to_json`."""
        import textwrap

        from search.table_markdown import compact_columns, markdown_table, rounds_markdown

        frame = self.table if top is None else self.table.head(top)
        intro = (f"Model `{self.request.get('model')}`; objectives: {', '.join(self.objectives)}; "
                 f"{self.n_complete} of {self.n_trials} trials complete, {self.n_failed} failed. Every column "
                 f"(intervals, why not, strategy JSON) is in table.csv and table.json.")
        lines = [f"# fitplan search `{self.study_name}`", "", textwrap.fill(intro, 80), "",
                 markdown_table(frame, compact_columns(self.table, self.request))]
        if self.rounds:
            lines += ["", "## Predictor quality per round", "", rounds_markdown(rounds_frame(self.rounds), "table.json")]
        text = "\n".join(lines) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def plot_pareto(self, path: str | Path, **kwargs) -> Path:
        """PNG Pareto plot (matplotlib Agg)."""
        from search.plots import plot_pareto_png

        return plot_pareto_png(self.table, path, **kwargs)

    def plot_pareto_html(self, path: str | Path, **kwargs) -> Path:
        """Interactive, self-contained HTML Pareto plot (plotly.js embedded)."""
        from search.plots import plot_pareto_html

        return plot_pareto_html(self.table, path, **kwargs)

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write table.csv, table.json, table.md, pareto.png and pareto.html into ``out_dir``."""
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            from planner.errors import InvalidRequestError

            raise InvalidRequestError(f"--out {str(out_dir)!r} is a file; give a directory.")
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "table.csv", "json": out / "table.json", "md": out / "table.md",
                 "png": out / "pareto.png", "html": out / "pareto.html"}
        self.to_csv(paths["csv"])
        self.to_json(paths["json"])
        self.to_markdown(paths["md"])
        x = "memory_gib" if "memory_gib" in self.objectives else _x_axis(self.objectives)
        self.plot_pareto(paths["png"], x=x)
        self.plot_pareto_html(paths["html"], x=x)
        return paths


def reference_mask(frame: "pd.DataFrame") -> "pd.Series":
    """True on the reference row (the uncompressed model)."""
    if "reference" not in frame:
        import pandas as pd

        return pd.Series(False, index=frame.index)
    return frame["reference"].fillna(False).astype(bool)


def _x_axis(objectives: tuple[str, ...]) -> str:
    from search.objective import OBJECTIVES

    others = [OBJECTIVES[o].column for o in objectives if o != "quality_loss"]
    return others[0] if others else "memory_gib"


def _records(frame: "pd.DataFrame") -> list[dict[str, Any]]:
    records = []
    for record in frame.to_dict(orient="records"):
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    return records


def non_dominated_layers(values: list[list[float]]) -> list[int]:
    """Pareto layer of each point (1 = non-dominated) for minimisation of every coordinate."""
    n = len(values)
    layer = [0] * n
    remaining = set(range(n))
    current = 1
    while remaining:
        front = [i for i in remaining
                 if not any(_dominates(values[j], values[i]) for j in remaining if j != i)]
        for i in front:
            layer[i] = current
        remaining -= set(front)
        current += 1
    return layer


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def rounds_frame(rounds: list[RoundReport]) -> "pd.DataFrame":
    """The round reports as a table (one row per round)."""
    import pandas as pd

    return pd.DataFrame([r.model_dump() for r in rounds])


def _limits(request: dict[str, Any]) -> dict[str, float]:
    """The active limits of the request's constraints ({} when they cannot be rebuilt)."""
    from planner.errors import FitplanError
    from planner.planning.constraints import Constraints

    try:
        return Constraints(**(request.get("constraints") or {})).active_limits()
    except (FitplanError, ValueError, TypeError):
        return {}


def _measured_values(values: list[float], objectives: tuple[str, ...], measured: Any,
                     baseline_latency_ms: float | None, same_device: bool) -> list[float]:
    """Objective values with the measured figure where one exists (quality loss; memory, latency and
    speedup when measured on the device the search plans for)."""
    out = list(values)
    for i, name in enumerate(objectives):
        value = None
        if name == "quality_loss" and measured.quality_retained_pct is not None:
            value = 100.0 - measured.quality_retained_pct
        elif not same_device:
            continue
        elif name == "memory_gib":
            value = measured.memory_gib
        elif name == "latency_ms":
            value = measured.latency_ms
        elif name == "speedup" and baseline_latency_ms and measured.latency_ms:
            value = baseline_latency_ms / measured.latency_ms
        if value is not None:
            out[i] = value
    return out


def result_from_study(study: "optuna.Study", *, interrupted: bool = False, resumed: bool = False,
                      evaluations: int = 0) -> SearchResult:
    """Rebuild the trials and the ranked table from the study's trials and user attributes (with the
    closed loop's re-scored predictions and measurements, see the module docstring)."""
    import optuna
    import pandas as pd

    from search.measured import (MEASURED_PREFIX, RESCORED_PREFIX, ROUND_ATTR, ROUNDS_KEY, MeasuredCandidate,
                                 Rescored, digest, measured_checks, study_items)
    from search.objective import strategy_key

    attrs = study.user_attrs
    request = attrs.get("fitplan_request") or {}
    objectives = tuple(request.get("objectives") or ())
    directions = tuple(d.name.lower() for d in study.directions)
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    measured = study_items(attrs, MEASURED_PREFIX, MeasuredCandidate)
    rescored = study_items(attrs, RESCORED_PREFIX, Rescored)
    limits = _limits(request) if measured else {}
    # Memory and speed measured on the device the search plans for (target local) verify those limits.
    same_device = (request.get("constraints") or {}).get("deployment_target") == "local"
    from planner.strategy import CompressionStrategy

    baseline = measured.get(digest(strategy_key(CompressionStrategy())))
    baseline_latency = baseline.latency_ms if baseline is not None and baseline.ok else None
    reference_key = strategy_key(CompressionStrategy())
    trial_rows, rows, seen = [], [], {}

    def add_row(key: str, row: dict[str, Any], values: list[float], violation: float, record: dict[str, Any],
                number: int | None) -> None:
        latest = rescored.get(digest(key))
        if latest is not None:
            if latest.values is None:  # after refinement an objective became unknown: not rankable
                return
            row = table_row(latest.record["prediction"], latest.record.get("violations") or [])
            values, violation = list(latest.values), max(0.0, latest.violation)
        row = {**row, **{column: None for column in MEASURED_COLUMNS}, "verified": False,
               "reference": key == reference_key}
        if row["reference"]:
            row["strategy"] = REFERENCE_LABEL
        done = measured.get(digest(key))
        if done is not None:
            row.update(measured_quality_retained_pct=done.quality_retained_pct, measured_memory_gib=done.memory_gib,
                       measured_latency_ms=done.latency_ms, measured_status=done.status_text, measured_run=done.run)
            if not done.ok:
                row.update(feasible=False, why_not=f"measured failed: {done.reason or 'unknown reason'}")
                violation = math.inf
            else:
                values = _measured_values(values, objectives, done, baseline_latency, same_device)
                current = latest.record if latest is not None else record
                clauses = measured_checks(done, limits, baseline_latency,
                                          predicted=current.get("constraint_values") or {}, row=row,
                                          same_device=same_device)
                row.update(verified=not clauses, feasible=not clauses, why_not="; ".join(clauses))
                violation = 0.0 if row["verified"] else max(violation, 1.0)
        rows.append({**row, "trial": number, "_values": [s * v for s, v in zip(signs, values)],
                     "_violation": violation})

    all_trials = study.get_trials(deepcopy=False)
    for trial in all_trials:
        record = trial_record(trial)
        base = {"number": trial.number, "state": trial.state.name, "round": trial.user_attrs.get(ROUND_ATTR),
                "worker": record.get("worker"), "error": trial.system_attrs.get("fail_reason")}
        if trial.values:
            base.update({f"objective_{name}": value for name, value in zip(objectives, trial.values)})
        prediction = record.get("prediction")
        row = table_row(prediction, record.get("violations") or []) if prediction else {}
        trial_rows.append({**base, **row})
        if trial.state != optuna.trial.TrialState.COMPLETE or not prediction:
            continue
        key = record["strategy"]
        if key in seen:
            continue
        seen[key] = True
        add_row(key, row, list(trial.values), sum(max(0.0, c) for c in (trial.constraints or {}).values()),
                record, trial.number)
    # Measured strategies no trial proposed (the reference run the loop was given): from their re-scored record.
    for name, done in measured.items():
        latest = rescored.get(name)
        if done.key not in seen and latest is not None and latest.values is not None:
            seen[done.key] = True
            add_row(done.key, {}, list(latest.values), latest.violation, latest.record, None)
    trials = pd.DataFrame(trial_rows)
    ranking = {row["strategy_json"]: ([s * v for s, v in zip(signs, row["_values"])], row["_violation"])
               for row in rows}
    table = _rank(rows)
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in all_trials)
    n_failed = sum(t.state == optuna.trial.TrialState.FAIL for t in all_trials)
    rounds = [RoundReport.model_validate(r) for r in attrs.get(ROUNDS_KEY) or []]
    return SearchResult(study_name=study.study_name, request=request, objectives=objectives, directions=directions,
                        trials=trials, table=table, n_trials=len(all_trials), n_complete=n_complete,
                        n_failed=n_failed, interrupted=interrupted, resumed=resumed, evaluations=evaluations,
                        rounds=rounds, ranking=ranking)


def _rank(rows: list[dict[str, Any]]) -> "pd.DataFrame":
    import pandas as pd

    reference = [r for r in rows if r.get("reference")]
    for row in reference:
        row["pareto"] = False
        row["rank"] = 0
    rows = [r for r in rows if not r.get("reference")]
    feasible = [r for r in rows if r["feasible"]]
    infeasible = [r for r in rows if not r["feasible"]]
    layers = non_dominated_layers([r["_values"] for r in feasible])
    for row, layer in zip(feasible, layers):
        row["pareto"] = layer == 1
        row["_layer"] = layer
    feasible.sort(key=lambda r: (r["_layer"], r["_values"]))
    infeasible.sort(key=lambda r: (r["_violation"], r["_values"]))
    for row in infeasible:
        row["pareto"] = False
    for rank, row in enumerate(feasible + infeasible, start=1):
        row["rank"] = rank
    ordered = reference + feasible + infeasible
    columns = [*TABLE_COLUMNS, *MEASURED_COLUMNS, "reference", "trial"]
    frame = pd.DataFrame(ordered, columns=columns) if ordered else pd.DataFrame(columns=columns)
    return frame.reset_index(drop=True)
