"""The bridge between the planner's candidate prediction and the search's trials and tables.

A trial is scored by ``planner.planning.candidate.Evaluator`` (the code ``fitplan plan`` ranks with);
this module turns its :class:`~planner.planning.candidate.Candidate` into:

- the JSON stored in the trial (``prediction``), from which :func:`table_row` rebuilds the table row,
  so ``fitplan results`` needs nothing but the study;
- constraint values: one per active limit of the constraints plus ``hardware``, each the relative
  amount by which the candidate exceeds it (0 when it is within); their sum is the trial's Optuna
  constraint (see search.objective).

``TABLE_COLUMNS`` (the ranked trade-off table):

=====================  ==================================================================================
rank                   1 = best feasible (see search.results)
strategy               one-line strategy summary
quality_retained_pct   predicted quality retained, % of the uncompressed model
quality_low_pct        lower end of its 80% interval
quality_high_pct       upper end of its 80% interval
basis                  prior / profile / calibrated (+ number of measurements behind it)
quality_loss_pct       100 - quality_retained_pct
memory_gib             per-GPU memory, safe bound (GiB)
fits                   fits the memory budget / GPU
gpus                   GPUs one copy needs
tokens_per_s           decode tokens/s of the whole batch (None: unknown)
speedup                decode (or prefill) speedup vs the uncompressed model (target ``local``: baseline
                       latency / latency)
latency_ms             target ``local``: the executors' timed forward over their batch, ms (None elsewhere)
usd_per_hour           $/h of those GPUs (None: no price)
usd_per_1m_tokens      $ per 1M output tokens (None: no price or no speed)
feasible               satisfies every constraint
pareto                 on the feasible Pareto front of the study's objectives
why_not                the violated constraints, one clause each ('' when feasible)
strategy_json          the strategy, CompressionStrategy JSON
=====================  ==================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from planner.errors import InvalidRequestError

if TYPE_CHECKING:
    from planner.models.spec import ModelSpec
    from planner.planning.constraints import Constraints
    from planner.strategy import CompressionStrategy
    from search.space import SearchSpace

TABLE_COLUMNS: tuple[str, ...] = (
    "rank", "strategy", "quality_retained_pct", "quality_low_pct", "quality_high_pct", "basis", "quality_loss_pct",
    "memory_gib", "fits", "gpus", "tokens_per_s", "speedup", "latency_ms", "usd_per_hour", "usd_per_1m_tokens", "feasible",
    "pareto", "why_not", "strategy_json",
)


def coerce_constraints(constraints: Any) -> "Constraints":
    """A ``Constraints`` from itself or a dict (None is an error: a search needs a device budget)."""
    from planner.planning.constraints import Constraints

    if isinstance(constraints, Constraints):
        return constraints
    if constraints is None:
        raise InvalidRequestError("a search needs constraints with a device budget: max_memory_gb, a gpu or a "
                                  "deployment_target (e.g. Constraints(max_memory_gb=16, max_accuracy_loss=5)).")
    if isinstance(constraints, dict):
        return Constraints(**constraints)
    raise InvalidRequestError(f"constraints must be a planner.Constraints or a dict, got {type(constraints).__name__}.")


def request_record(spec: "ModelSpec", constraints: "Constraints", space: "SearchSpace",
                   objectives: tuple) -> dict[str, Any]:
    """What a study records about its request (compared on resume, minus the fitplan version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        fitplan_version = version("fitplan")
    except PackageNotFoundError:
        fitplan_version = "unknown"
    return {"model": spec.name, "constraints": constraints.model_dump(mode="json", exclude_none=True),
            "space": space.record(), "objectives": [o.name for o in objectives],
            "fitplan_version": fitplan_version}


def candidate_evaluator(spec: "ModelSpec", constraints: "Constraints", objectives: tuple, *, profile: Any = None,
                        calibration: Any = None, metric: str | None = None, device: str = "auto"
                        ) -> Callable[["CompressionStrategy"], dict[str, Any]]:
    """A function strategy -> trial row (table columns + prediction JSON + constraint values). ``metric``: the
    executors' evaluator or metric family quality is predicted on ('fidelity', 'perplexity', 'accuracy'...);
    ``device``: the executors' device of deployment target ``local`` ('auto', 'cpu', 'cuda')."""
    from planner.planning.candidate import Evaluator

    evaluator = Evaluator(spec, constraints, profile=profile, calibration=calibration, metric=metric, device=device)
    limits = list(constraints.active_limits())

    def evaluate(strategy: "CompressionStrategy") -> dict[str, Any]:
        candidate = evaluator.evaluate(strategy)
        prediction = candidate.model_dump(mode="json")
        violations = [v.message for v in candidate.violations]
        values = {name: 0.0 for name in limits}
        values["hardware"] = 0.0
        for violation in candidate.violations:
            key = violation.constraint if violation.constraint in values else "hardware"
            if violation.amount is not None and violation.limit:
                amount = abs(violation.amount) / abs(violation.limit)
            else:
                amount = 1.0
            values[key] = max(values[key], max(amount, 1e-9))
        row = table_row(prediction, violations)
        row.update(prediction=prediction, violations=violations, constraint_values=values,
                   unknown_reason="; ".join(candidate.notes))
        return row

    return evaluate


def table_row(prediction: dict[str, Any], violations: list[str]) -> dict[str, Any]:
    """The trade-off table columns of one stored prediction (the Candidate JSON)."""
    quality = prediction.get("quality") or {}
    basis = quality.get("basis", "prior")
    n = quality.get("n_measurements") or 0
    retained = quality.get("retained_pct")
    strategy = prediction.get("strategy") or {}
    import json

    return {
        "strategy": prediction.get("summary", ""),
        "quality_retained_pct": retained,
        "quality_low_pct": quality.get("low_pct"),
        "quality_high_pct": quality.get("high_pct"),
        "basis": f"{basis} ({n})" if n else basis,
        "quality_loss_pct": prediction.get("loss_pct"),
        "memory_gib": prediction.get("memory_gib"),
        "fits": prediction.get("fits"),
        "gpus": prediction.get("gpus_needed") or prediction.get("gpus"),
        "tokens_per_s": prediction.get("tokens_per_s"),
        "speedup": prediction.get("speedup"),
        "latency_ms": prediction.get("latency_ms"),
        "usd_per_hour": prediction.get("usd_per_hour"),
        "usd_per_1m_tokens": prediction.get("usd_per_1m_tokens"),
        "feasible": bool(prediction.get("feasible")),
        "why_not": "; ".join(violations),
        "strategy_json": json.dumps(strategy, sort_keys=True, separators=(",", ":")),
    }
