"""The result of a search, rebuilt from its Optuna study alone.

:class:`SearchResult` holds every trial as a DataFrame and the ranked trade-off table:

``TABLE_COLUMNS`` (documented below) — rank 1 is the best feasible candidate: feasible candidates come
first, ordered by Pareto layer (non-dominated sorting over the study's objectives) and then by the
first objective; infeasible ones follow, least violating first. ``pareto`` is the first layer.
Equal strategies proposed twice (several workers, or the sampler repeating itself) appear once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from search.candidates import TABLE_COLUMNS, table_row
from search.objective import trial_record

if TYPE_CHECKING:
    import optuna
    import pandas as pd


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

    @property
    def pareto(self) -> "pd.DataFrame":
        """The feasible non-dominated candidates (Pareto layer 1)."""
        return self.table[self.table["pareto"]]

    @property
    def best(self) -> dict[str, Any] | None:
        """The rank-1 feasible candidate's row, or None when no trial is feasible."""
        feasible = self.table[self.table["feasible"]]
        return None if feasible.empty else feasible.iloc[0].to_dict()

    # -- export -------------------------------------------------------------------------------------

    def to_csv(self, path: str | Path | None = None) -> str:
        text = self.table.to_csv(index=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_json(self, path: str | Path | None = None) -> str:
        payload = {"study": self.study_name, "request": self.request, "objectives": list(self.objectives),
                   "trials": self.n_trials, "complete": self.n_complete, "failed": self.n_failed,
                   "interrupted": self.interrupted, "table": _records(self.table)}
        text = json.dumps(payload, indent=2, default=str)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self, path: str | Path | None = None, top: int | None = None) -> str:
        frame = self.table if top is None else self.table.head(top)
        lines = [f"# fitplan search `{self.study_name}`", "",
                 f"Model `{self.request.get('model')}`; objectives: {', '.join(self.objectives)}; "
                 f"{self.n_complete} of {self.n_trials} trials complete, {self.n_failed} failed.", "",
                 _markdown_table(frame)]
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


def _x_axis(objectives: tuple[str, ...]) -> str:
    from search.objective import OBJECTIVES

    others = [OBJECTIVES[o].column for o in objectives if o != "quality_loss"]
    return others[0] if others else "memory_gib"


def _records(frame: "pd.DataFrame") -> list[dict[str, Any]]:
    records = []
    for record in frame.to_dict(orient="records"):
        records.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()})
    return records


def _markdown_table(frame: "pd.DataFrame") -> str:
    headers = list(frame.columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for record in frame.itertuples(index=False):
        cells = []
        for value in record:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("-")
            elif isinstance(value, bool):
                cells.append("yes" if value else "no")
            elif isinstance(value, float):
                cells.append(f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}")
            else:
                cells.append(str(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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


def result_from_study(study: "optuna.Study", *, interrupted: bool = False, resumed: bool = False,
                      evaluations: int = 0) -> SearchResult:
    """Rebuild the trials and the ranked table from the study's trials and user attributes."""
    import optuna
    import pandas as pd

    request = study.user_attrs.get("fitplan_request") or {}
    objectives = tuple(request.get("objectives") or ())
    directions = tuple(d.name.lower() for d in study.directions)
    trial_rows, rows, seen = [], [], {}
    all_trials = study.get_trials(deepcopy=False)
    for trial in all_trials:
        record = trial_record(trial)
        base = {"number": trial.number, "state": trial.state.name, "worker": record.get("worker"),
                "error": trial.system_attrs.get("fail_reason")}
        if trial.values:
            base.update({f"objective_{name}": value for name, value in zip(objectives, trial.values)})
        prediction = record.get("prediction")
        row = table_row(prediction, record.get("violations") or []) if prediction else {}
        trial_rows.append({**base, **row})
        if trial.state == optuna.trial.TrialState.COMPLETE and prediction:
            key = record["strategy"]
            if key in seen:
                continue
            seen[key] = True
            signs = [1.0 if d == "minimize" else -1.0 for d in directions]
            rows.append({**row, "trial": trial.number, "_values": [s * v for s, v in zip(signs, trial.values)],
                         "_violation": sum(max(0.0, c) for c in (trial.constraints or {}).values())})
    trials = pd.DataFrame(trial_rows)
    table = _rank(rows)
    n_complete = sum(t.state == optuna.trial.TrialState.COMPLETE for t in all_trials)
    n_failed = sum(t.state == optuna.trial.TrialState.FAIL for t in all_trials)
    return SearchResult(study_name=study.study_name, request=request, objectives=objectives, directions=directions,
                        trials=trials, table=table, n_trials=len(all_trials), n_complete=n_complete,
                        n_failed=n_failed, interrupted=interrupted, resumed=resumed, evaluations=evaluations)


def _rank(rows: list[dict[str, Any]]) -> "pd.DataFrame":
    import pandas as pd

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
    ordered = feasible + infeasible
    for rank, row in enumerate(ordered, start=1):
        row["rank"] = rank
    frame = pd.DataFrame(ordered, columns=[*TABLE_COLUMNS, "trial"]) if ordered else pd.DataFrame(
        columns=[*TABLE_COLUMNS, "trial"])
    return frame.reset_index(drop=True)
