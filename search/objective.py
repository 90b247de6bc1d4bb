"""What a trial computes: one strategy's prediction from the planner, its objectives and constraints.

A trial asks the space for a strategy, scores it with ``planner.planning.evaluate_candidate`` (the
same prediction ``fitplan plan`` ranks: quality with interval and basis, memory, speed, cost,
feasibility), and records one user attribute, ``fitplan`` (read it with :func:`trial_record`):

- ``strategy``: the strategy's canonical JSON (``CompressionStrategy.from_json`` rebuilds it);
- ``summary``: its one-line summary;
- ``prediction``: the full candidate prediction (JSON object);
- ``violations``: the violated constraints, one line each (empty when feasible);
- ``constraint_values``: per constraint (each active limit and ``hardware``), the relative amount by
  which it is exceeded (0 when within);
- ``worker``: ``host:pid`` of the process that ran it.

Constraints go through Optuna's constraint mechanism (``trial.set_constraint("violation", v)``: feasible
when v <= 0), v being the sum of the relative excesses, so infeasible trials still guide the
multi-objective samplers (the less violating, the better) rather than being dropped. One attribute and
one constraint per trial keep a trial to a few storage writes (SQLite and PostgreSQL commit each).

Equivalent configurations are scored once per process: predictions are cached by the strategy's
canonical JSON.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from planner.errors import InvalidRequestError

if TYPE_CHECKING:
    import optuna

    from planner.strategy import CompressionStrategy


@dataclass(frozen=True)
class Objective:
    """One quantity a search optimises: its direction, what it means, and how to read it."""

    name: str
    direction: str  # "minimize" | "maximize"
    label: str
    column: str  # trade-off table column holding it

    def value(self, row: dict[str, Any]) -> float | None:
        value = row.get(self.column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("quality_loss", "minimize", "predicted quality loss, % of the uncompressed model", "quality_loss_pct"),
    Objective("memory_gib", "minimize", "memory per GPU at the peak (safe bound), GiB", "memory_gib"),
    Objective("cost_per_1m_tokens", "minimize", "$ per 1M output tokens", "usd_per_1m_tokens"),
    Objective("tokens_per_s", "maximize", "decode tokens/s", "tokens_per_s"),
    Objective("speedup", "maximize", "decode speedup vs the uncompressed model", "speedup"),
    Objective("latency_ms", "minimize", "the executors' timed forward, ms (deployment target local)", "latency_ms"),
)}
DEFAULT_OBJECTIVES = ("quality_loss", "memory_gib", "cost_per_1m_tokens")
LOCAL_OBJECTIVES = ("quality_loss", "memory_gib", "latency_ms")


def default_objectives(constraints: Any) -> tuple[str, ...]:
    """The objectives a search optimises unless told: quality loss, memory and $ per 1M tokens on a priced
    GPU; latency instead of cost on the ``local`` target (this machine: the executors' timed forward); quality
    loss and memory alone where neither is known (no GPU, or a GPU without a price), so no trial fails
    for lack of a figure the target cannot give."""
    if constraints.is_local:
        return LOCAL_OBJECTIVES
    acc = constraints.gpu_accelerator()
    if acc is None or acc.cloud_usd_per_hour is None:
        return DEFAULT_OBJECTIVES[:2]
    return DEFAULT_OBJECTIVES
RECORD_KEY = "fitplan"
# Which process ran a trial (host:pid): a distributed study says who did what.
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def resolve_objectives(names: tuple[str, ...] | list[str] | str) -> tuple[Objective, ...]:
    """Objectives by name (a comma-separated string works too); unknown names are a clear error."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise InvalidRequestError(f"objectives must name at least one of: {', '.join(OBJECTIVES)}.")
    out = []
    for name in names:
        if name not in OBJECTIVES:
            from hardware_db.names import did_you_mean

            raise InvalidRequestError(f"unknown objective {name!r}.{did_you_mean(name, OBJECTIVES)} Allowed: "
                                      f"{', '.join(OBJECTIVES)}.")
        out.append(OBJECTIVES[name])
    if len(set(out)) != len(out):
        raise InvalidRequestError("objectives must not repeat.")
    return tuple(out)


class TrialScorer:
    """Scores strategies with the planner (cached by canonical JSON) and fills Optuna trials."""

    def __init__(self, evaluate: Callable[["CompressionStrategy"], dict[str, Any]],
                 objectives: tuple[Objective, ...]):
        self._evaluate = evaluate
        self.objectives = objectives
        self.cache: dict[str, dict[str, Any]] = {}
        self.evaluations = 0

    def row(self, strategy: "CompressionStrategy") -> dict[str, Any]:
        """The trade-off row of ``strategy`` (from the cache when the same configuration was seen)."""
        key = strategy_key(strategy)
        if key not in self.cache:
            self.cache[key] = self._evaluate(strategy)
            self.evaluations += 1
        return self.cache[key]

    def __call__(self, trial: "optuna.trial.Trial", strategy: "CompressionStrategy") -> list[float]:
        row = self.row(strategy)
        trial.set_user_attr(RECORD_KEY, {"strategy": strategy_key(strategy), "summary": strategy.summary(),
                                         "prediction": row["prediction"], "violations": row["violations"],
                                         "constraint_values": row["constraint_values"], "worker": WORKER})
        trial.set_constraint("violation", sum(row["constraint_values"].values()))
        values = []
        for objective in self.objectives:
            value = objective.value(row)
            if value is None:
                # No figure to optimise (e.g. the engine cannot run this combination): the trial fails with
                # the reason instead of inventing a penalty value.
                why = "; ".join(row["violations"]) or row.get("unknown_reason") or "not predicted"
                raise InvalidRequestError(f"objective {objective.name!r} ({objective.label}) is unknown for "
                                          f"{strategy.summary()}: {why}")
            values.append(value)
        return values


def trial_record(trial: "optuna.trial.FrozenTrial") -> dict[str, Any]:
    """The ``fitplan`` record of a trial ({} for a trial that failed before it was scored)."""
    return trial.user_attrs.get(RECORD_KEY) or {}


def strategy_key(strategy: "CompressionStrategy") -> str:
    """Canonical JSON of a strategy: equal strategies give equal keys."""
    import json

    return json.dumps(json.loads(strategy.to_json()), sort_keys=True, separators=(",", ":"))
