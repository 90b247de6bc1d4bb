"""``planner.plan``: rank every strategy of the grid under the user's constraints.

Steps: enumerate the grid the hardware runs (``grid``), evaluate each strategy (``candidate.Evaluator``:
derived model, estimator figures, predicted quality), check every limit on whole columns
(``limits``), rank the feasible candidates by the objective, mark the Pareto front, pick one
recommendation, and explain the nearest misses (what they violate, by how much, and the one-axis
change that would admit them). When nothing is feasible the plan says which limit binds and what
relaxation of it would admit a candidate: it never answers with an empty table alone.

Objectives (ties broken by lower predicted loss, then lower memory):
``accuracy`` lowest predicted quality loss; ``cost`` lowest $ per 1M generated tokens; ``speed``
highest decode tokens/s; ``memory`` lowest memory per GPU.
"""

from __future__ import annotations

import gc
import json
import math
from typing import Any

import numpy as np

from planner.errors import FitplanError, InvalidRequestError
from planner.planning.candidate import Candidate, Evaluator
from planner.planning.constraints import OBJECTIVES, Constraints
from planner.planning.grid import Grid, enumerate_strategies
from planner.planning.limits import LIMITS, admitting, format_value, violation_amounts
from planner.strategy import CompressionStrategy

# Columns of Plan.table(), in order, with their meaning (also the CSV/JSON field names).
TABLE_COLUMNS: dict[str, str] = {
    "rank": "position among the feasible candidates by the objective (None when infeasible)",
    "strategy": "CompressionStrategy summary ('gptq-int4 kv fp8 | 2:4 wanda | depth 0.75')",
    "weights": "weight format of the transformer blocks",
    "kv_cache": "KV-cache dtype ('-' = compute dtype)",
    "sparsity": "sparsity pattern, level and method ('-' = dense)",
    "distillation": "derived student: depth/width ratios ('-' = full model)",
    "retained_pct": "predicted quality retained, % of the uncompressed model",
    "retained_low_pct": "lower end of its 80% interval",
    "retained_high_pct": "upper end of its 80% interval",
    "basis": "what the prediction rests on: prior, profile or calibrated",
    "n_measurements": "measurements behind the prediction",
    "loss_pct": "predicted quality loss, % (100 - retained_pct)",
    "params_b": "parameters of the derived model, billions",
    "memory_gib": "memory per GPU at the constraint's GPU count (safe bound), GiB",
    "fits": "memory_gib within the budget",
    "gpus_needed": "GPUs one copy needs (0: more than 16x the constraint's count)",
    "tokens_per_s": "decode tokens/s of the whole batch (deployment target 'local': of the timed forward)",
    "prefill_tokens_per_s": "prompt tokens/s",
    "speedup": "tokens/s over the uncompressed bf16/fp16 model on the same GPUs and engine ('local': baseline "
               "latency / latency)",
    "latency_ms": "deployment target 'local': the executors' timed forward over their batch, ms (else empty)",
    "usd_per_hour": "$/h of the GPUs",
    "usd_per_1m_tokens": "$ per 1M generated tokens",
    "feasible": "meets every limit",
    "pareto": "on the Pareto front of the feasible candidates (loss, memory, cost or speed)",
    "violations": "the limits it breaks and by how much",
    "notes": "how sparse weights are stored and whether they speed anything up",
}

_AXES = ("weights", "kv_cache", "sparsity", "distillation")
_AXIS_DEFAULTS = {"kv_cache": "KV in the compute dtype", "sparsity": "no sparsity",
                  "distillation": "the full-size model"}
_AXIS_WORDS = {"weights": "weights in {}", "kv_cache": "KV in {}", "sparsity": "sparsity {}",
               "distillation": "distillation {}"}


class MissedCandidate:
    """An infeasible candidate close to the limits: what it violates and what would admit it."""

    def __init__(self, candidate: Candidate, hint: str | None):
        self.candidate = candidate
        self.hint = hint

    @property
    def explanation(self) -> str:
        text = "; ".join(v.message for v in self.candidate.violations)
        return f"{text}; {self.hint}" if self.hint else text

    def as_dict(self) -> dict[str, Any]:
        return {"strategy": self.candidate.summary, "violations": [v.model_dump() for v in self.candidate.violations],
                "hint": self.hint, "explanation": self.explanation}


class Plan:
    """The answer of :func:`plan`: ranked candidates, Pareto front, recommendation, nearest misses."""

    def __init__(self, *, model: str, constraints: Constraints, objective: str, state: _Grid, misses: int,
                 excluded_formats: dict[str, str]):
        self.model = model
        self.constraints = constraints
        self.objective = objective
        self.excluded_formats = excluded_formats
        self._state = state
        self._misses = misses
        self._load(_assemble(state, objective, misses))

    def _load(self, parts: dict[str, Any]) -> None:
        self._frame = parts["frame"]
        self._strategies: list[CompressionStrategy] = parts["strategies"]
        self.recommended: Candidate | None = parts["recommended"]
        self.reason: str = parts["reason"]
        self.nearest_misses: list[MissedCandidate] = parts["nearest_misses"]
        self.relaxations: list[str] = parts["relaxations"]
        self.binding: str | None = parts["binding"]
        self.baseline: dict[str, Any] = parts["baseline"]
        self.notes: list[str] = parts["notes"]

    def evaluate_all(self) -> None:
        """Run every candidate through the memory/speed model (those beyond max_accuracy_loss included)."""
        if not self._frame["_evaluated"].all():
            self._state.complete()
            self._load(_assemble(self._state, self.objective, self._misses))

    @property
    def n_candidates(self) -> int:
        return len(self._frame)

    @property
    def n_feasible(self) -> int:
        return int(self._frame["feasible"].sum())

    def table(self, which: str = "feasible"):
        """A DataFrame with :data:`TABLE_COLUMNS`: ``feasible`` (ranked), ``pareto`` or ``all`` candidates."""
        if which == "all":
            self.evaluate_all()
        frame = self._frame
        if which == "feasible":
            frame = frame[frame["feasible"]]
        elif which == "pareto":
            frame = frame[frame["pareto"]]
        elif which != "all":
            raise InvalidRequestError(f"which must be 'feasible', 'pareto' or 'all', got {which!r}.")
        return frame[list(TABLE_COLUMNS)].reset_index(drop=True)

    @property
    def pareto(self):
        return self.table("pareto")

    def strategy(self, rank: int) -> CompressionStrategy:
        """The strategy at feasible ``rank`` (1 = recommended)."""
        if not 1 <= rank <= self.n_feasible:
            raise InvalidRequestError(f"no feasible candidate at rank {rank} (there are {self.n_feasible}).")
        return self._strategies[rank - 1]

    def as_dict(self, which: str = "feasible") -> dict[str, Any]:
        table = self.table(which)
        return {
            "model": self.model, "constraints": self.constraints.model_dump(mode="json", exclude_none=True),
            "objective": self.objective, "baseline": self.baseline, "n_candidates": self.n_candidates,
            "n_feasible": self.n_feasible,
            "recommended": None if self.recommended is None else {
                "strategy": json.loads(self.recommended.strategy.to_json()), "summary": self.recommended.summary,
                "reason": self.reason},
            "nearest_misses": [m.as_dict() for m in self.nearest_misses], "relaxations": self.relaxations,
            "binding": self.binding, "excluded_formats": self.excluded_formats, "notes": self.notes,
            "candidates": table.replace({np.nan: None}).to_dict(orient="records"),
        }

    def to_json(self, which: str = "feasible") -> str:
        from planner.render import _jsonable

        return json.dumps(_jsonable(self.as_dict(which)), indent=2)

    def to_csv(self, which: str = "feasible") -> str:
        return self.table(which).to_csv(index=False)

    def to_markdown(self, which: str = "feasible", limit: int | None = 20) -> str:
        table = self.table(which)
        if limit is not None:
            table = table.head(limit)
        lines = [f"# Compression plan: {self.model}", "", f"Constraints: {self.constraints.summary()}",
                 f"Objective: {self.objective}. {self.n_feasible} of {self.n_candidates} candidates feasible.", ""]
        if self.recommended is not None:
            lines += [f"**Recommended:** `{self.recommended.summary}`: {self.reason}", ""]
        else:
            lines += [f"**No candidate meets every limit.** {self.reason}", ""]
        header = "| " + " | ".join(table.columns) + " |"
        lines += [header, "|" + "---|" * len(table.columns)]
        for row in table.itertuples(index=False):
            lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
        if self.nearest_misses:
            lines += ["", "## Nearest misses", ""]
            lines += [f"- `{m.candidate.summary}`: {m.explanation}" for m in self.nearest_misses]
        if self.relaxations:
            lines += ["", "## Relaxations that admit a candidate", ""] + [f"- {r}" for r in self.relaxations]
        return "\n".join(lines) + "\n"


def _md_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "/")


def plan(model: Any, constraints: Constraints | dict, *, objective: str = "accuracy", profile: Any = None,
         calibration: Any = None, grid: Grid | None = None, misses: int = 5, metric: str | None = None) -> Plan:
    """Rank the compression strategies of ``model`` under ``constraints`` (see the module docstring).

    ``constraints``: a :class:`Constraints` or a dict of its fields (the seed lab's
    ``{'max_memory_gb': 16, 'max_accuracy_loss': 5, 'min_speedup': 1.5, 'deployment_target': 'cloud_inference'}``).
    ``profile`` / ``calibration``: a sensitivity profile and a calibration store for the accuracy model.
    ``metric``: the evaluator or metric family quality is predicted on ('fidelity', 'perplexity',
    'accuracy' (default)...: ``planner.accuracy.metrics.metric_family``).
    """
    if objective not in OBJECTIVES:
        from hardware_db.names import did_you_mean

        raise InvalidRequestError(f"unknown objective {objective!r}.{did_you_mean(str(objective), OBJECTIVES)} "
                                  f"Allowed: {', '.join(OBJECTIVES)}.")
    if not isinstance(constraints, Constraints):
        constraints = Constraints(**constraints)
    from planner.models.resolve import get_model

    spec = get_model(model)
    collecting = gc.isenabled()
    gc.disable()  # thousands of short-lived objects and no cycles: collection passes only cost time
    try:
        return _plan(spec, constraints, objective, profile, calibration, grid, misses, metric)
    finally:
        if collecting:
            gc.enable()


_DESCRIPTOR_COLUMNS = ["strategy", "weights", "kv_cache", "sparsity", "distillation", "retained_pct",
                       "retained_low_pct", "retained_high_pct", "basis", "n_measurements", "loss_pct"]
_FIGURE_COLUMNS = ["params_b", "memory_gib", "fits", "gpus_needed", "tokens_per_s", "prefill_tokens_per_s",
                   "speedup", "latency_ms", "usd_per_hour", "usd_per_1m_tokens"]
_FILL_CHUNK = 16


class _Grid:
    """The grid being planned: candidates in enumeration order, evaluated against the estimator in stages.

    Predicted quality is cheap and computed for every strategy first. With ``max_accuracy_loss`` set,
    only the strategies within it go through the estimator at once; the others are evaluated when an
    answer needs them (nearest misses, the accuracy relaxation, ``Plan.table('all')``). A candidate is
    feasible only once evaluated, so no answer rests on a figure that was not computed.
    """

    def __init__(self, evaluator: Evaluator, strategies: list[CompressionStrategy], limits: dict[str, float]):
        import pandas as pd

        self.evaluator = evaluator
        self.strategies = strategies
        self.limits = limits
        records = []
        for strategy in strategies:
            quality = evaluator.predict(strategy)
            quant, sparsity, distill = strategy.quantization, strategy.sparsity, strategy.distillation
            records.append((strategy.summary(), quant.weights if quant else evaluator.baseline_format,
                            (quant.kv_cache if quant else None) or "-", sparsity.summary() if sparsity else "-",
                            distill.summary() if distill else "-", quality.retained_pct, quality.low_pct,
                            quality.high_pct, quality.basis, quality.n_measurements, quality.loss_pct))
        frame = pd.DataFrame.from_records(records, columns=_DESCRIPTOR_COLUMNS)
        for name in _FIGURE_COLUMNS:
            frame[name] = np.nan
        frame["fits"] = False
        frame["gpus_needed"] = 0
        frame["notes"] = ""
        frame["_evaluated"] = False
        frame["_rejected"] = False
        self.frame = frame

    def fill(self, rows) -> None:
        """Evaluate memory, speed and cost of ``rows`` (positions) not evaluated yet."""
        frame, evaluator = self.frame, self.evaluator
        evaluated, rejected = frame["_evaluated"].to_numpy(copy=True), frame["_rejected"].to_numpy(copy=True)
        notes = frame["notes"].to_numpy(copy=True)
        local = evaluator.constraints.is_local
        values = {name: frame[name].to_numpy(dtype=float if name not in ("fits", "gpus_needed") else object,
                                             copy=True) for name in _FIGURE_COLUMNS}
        for i in rows:
            if evaluated[i]:
                continue
            evaluated[i] = True
            try:
                derived, figures, row_notes = evaluator.figures(self.strategies[i])
            except FitplanError:
                rejected[i] = True  # a combination the estimator rejects (e.g. too few layers): not a candidate
                continue
            for name, value in (("params_b", derived.params.total / 1e9), ("memory_gib", figures.memory_gib),
                                ("fits", figures.fits), ("gpus_needed", figures.gpus_needed),
                                ("tokens_per_s", figures.prefill_tok_s if local else figures.decode_tok_s),
                                ("prefill_tokens_per_s", figures.prefill_tok_s), ("latency_ms", figures.latency_ms),
                                ("speedup", evaluator.speedup(figures)), ("usd_per_hour", figures.usd_per_hour),
                                ("usd_per_1m_tokens", figures.usd_per_1m_tokens)):
                values[name][i] = np.nan if value is None else value
            notes[i] = "; ".join(row_notes)
        frame["notes"] = notes
        for name, column in values.items():
            frame[name] = column
        frame["fits"] = frame["fits"].astype(bool)
        frame["gpus_needed"] = frame["gpus_needed"].astype(int)
        frame["_evaluated"] = evaluated
        frame["_rejected"] = rejected

    def amounts(self) -> dict[str, np.ndarray]:
        """Violation amount of every limit per row (NaN: not evaluated yet, so unknown)."""
        evaluated = self.frame["_evaluated"].to_numpy()
        out = {}
        for name, bound in self.limits.items():
            limit = LIMITS[name]
            amount = violation_amounts(self.frame[limit.column].to_numpy(dtype=float), limit, bound)
            out[name] = amount if name == "max_accuracy_loss" else np.where(evaluated, amount, np.nan)
        return out

    def relative(self, amounts: dict[str, np.ndarray]) -> np.ndarray:
        """Sum of violations relative to their limits (unknown parts count as 0: a lower bound)."""
        total = np.zeros(len(self.frame))
        for name, amount in amounts.items():
            total += np.nan_to_num(amount, nan=0.0) / max(abs(self.limits[name]), 1e-12)
        return total

    def infeasible_order(self, amounts: dict[str, np.ndarray]) -> list[int]:
        feasible = self.feasible(amounts)
        relative = self.relative(amounts)
        candidates = np.nonzero(~feasible & ~self.frame["_rejected"].to_numpy())[0]
        return [int(i) for i in candidates[np.argsort(relative[candidates], kind="stable")]]

    def feasible(self, amounts: dict[str, np.ndarray]) -> np.ndarray:
        ok = self.frame["_evaluated"].to_numpy() & ~self.frame["_rejected"].to_numpy()
        for amount in amounts.values():
            ok &= np.nan_to_num(amount, nan=1.0) <= 0
        return ok

    def settle_misses(self, count: int) -> None:
        """Evaluate until the ``count`` nearest misses are all fully evaluated (their order is then exact)."""
        while count > 0:
            top = self.infeasible_order(self.amounts())[:count]
            todo = [i for i in top if not self.frame.at[i, "_evaluated"]]
            if not todo:
                return
            self.fill(todo)

    def settle_accuracy_relaxation(self) -> None:
        """Evaluate the candidates beyond max_accuracy_loss, least loss first, until one meets every other limit."""
        if "max_accuracy_loss" not in self.limits:
            return
        loss = self.frame["loss_pct"].to_numpy(dtype=float)
        waiting = [int(i) for i in np.argsort(loss, kind="stable") if not self.frame.at[int(i), "_evaluated"]]
        for start in range(0, len(waiting), _FILL_CHUNK):
            chunk = waiting[start:start + _FILL_CHUNK]
            self.fill(chunk)
            amounts = self.amounts()
            others = [a for name, a in amounts.items() if name != "max_accuracy_loss"]
            passes = np.ones(len(chunk), dtype=bool)
            for amount in others:
                passes &= np.nan_to_num(amount[chunk], nan=1.0) <= 0
            if passes.any() and not self.frame["_rejected"].to_numpy()[chunk][passes].all():
                return

    def complete(self) -> None:
        self.fill(range(len(self.frame)))


def _plan(spec, constraints: Constraints, objective: str, profile, calibration, grid, misses: int,
          metric: str | None = None) -> Plan:
    evaluator = Evaluator(spec, constraints, profile=profile, calibration=calibration, metric=metric)
    strategies, excluded = enumerate_strategies(spec, constraints, grid)
    limits = constraints.active_limits()
    state = _Grid(evaluator, strategies, limits)
    if "max_accuracy_loss" in limits:
        state.fill(np.nonzero(state.frame["loss_pct"].to_numpy(dtype=float) <= limits["max_accuracy_loss"])[0])
    else:
        state.complete()
    state.settle_misses(max(0, misses))
    amounts = state.amounts()
    if not state.feasible(amounts).any():
        state.settle_accuracy_relaxation()
    return Plan(model=spec.name, constraints=constraints, objective=objective, state=state, misses=misses,
                excluded_formats=excluded)


def _assemble(state: _Grid, objective: str, misses: int) -> dict[str, Any]:
    """The ordered table, recommendation, misses, relaxations and binding limit of the grid's current state."""
    import pandas as pd

    constraints, evaluator, limits = state.evaluator.constraints, state.evaluator, state.limits
    amounts = state.amounts()
    feasible = state.feasible(amounts)
    keep = ~state.frame["_rejected"].to_numpy()
    order = _ranking(state.frame, objective)
    ordered = [i for i in order if feasible[i]] + [i for i in state.infeasible_order(amounts)]
    ordered = [i for i in ordered if keep[i]]
    frame = state.frame.iloc[ordered].reset_index(drop=True)
    amounts = {name: amount[ordered] for name, amount in amounts.items()}
    n_feasible = int(feasible[ordered].sum())
    frame["feasible"] = feasible[ordered]
    frame["violations"] = _violation_texts(frame, amounts, limits)
    frame["rank"] = pd.array(list(range(1, n_feasible + 1)) + [None] * (len(frame) - n_feasible), dtype="Int64")
    frame["pareto"] = _pareto(frame, objective)
    strategies = [state.strategies[i] for i in ordered]

    notes = []
    if objective == "cost" and frame["usd_per_1m_tokens"].isna().all():
        notes.append("no cloud price for this GPU: the cost objective fell back to predicted loss")
    unevaluated = int((~frame["_evaluated"]).sum())
    if unevaluated:
        notes.append(f"{unevaluated} candidates beyond max_accuracy_loss were not run through the memory/speed "
                     "model (Plan.table('all') or --all evaluates them)")
    recommended, reason = None, ""
    if n_feasible:
        recommended = evaluator.evaluate(strategies[0])
        reason = _reason(frame.iloc[0], objective, n_feasible, constraints)
    miss_rows = list(range(n_feasible, min(len(frame), n_feasible + max(0, misses))))
    nearest = [MissedCandidate(evaluator.evaluate(strategies[i]), _hint(frame, i, amounts)) for i in miss_rows]
    relaxations = _relaxations(frame, amounts, limits, constraints)
    binding = _binding(amounts)
    if not n_feasible:
        reason = (f"The binding limit is {binding}. " if binding else "") + (
            relaxations[0] if relaxations else "No single relaxation admits a candidate; see the nearest misses.")
    base = evaluator.baseline
    baseline = {"format": evaluator.baseline_format, "memory_gib": base.memory_gib,
                "decode_tokens_per_s": base.decode_tok_s, "prefill_tokens_per_s": base.prefill_tok_s,
                "gpus": base.gpus, "latency_ms": base.latency_ms}
    return dict(frame=frame, strategies=strategies, recommended=recommended, reason=reason, nearest_misses=nearest,
                relaxations=relaxations, binding=binding, baseline=baseline, notes=notes)


def _violation_texts(frame, amounts: dict[str, np.ndarray], limits: dict[str, float]) -> list[str]:
    from planner.planning.limits import describe

    texts = [[] for _ in range(len(frame))]
    for name, amount in amounts.items():
        limit = LIMITS[name]
        values = frame[limit.column].to_numpy(dtype=float)
        for i in np.nonzero(amount > 0)[0]:
            value = values[i]
            texts[i].append(describe(limit, None if math.isnan(value) else float(value), limits[name]))
    return ["; ".join(t) for t in texts]


def _sort_keys(frame, objective: str) -> list[np.ndarray]:
    loss = frame["loss_pct"].to_numpy(dtype=float)
    memory = frame["memory_gib"].to_numpy(dtype=float)
    first = {
        "accuracy": loss,
        "cost": np.nan_to_num(frame["usd_per_1m_tokens"].to_numpy(dtype=float), nan=np.inf),
        "speed": -np.nan_to_num(frame["tokens_per_s"].to_numpy(dtype=float), nan=0.0),
        "memory": memory,
    }[objective]
    return [first, loss, memory]


def _ranking(frame, objective: str) -> list[int]:
    keys = _sort_keys(frame, objective)
    return [int(i) for i in np.lexsort(tuple(reversed(keys)))]


def _pareto(frame, objective: str) -> np.ndarray:
    """Non-dominated feasible candidates on (loss, memory, $/1M tokens or -tokens/s)."""
    third = (np.nan_to_num(frame["usd_per_1m_tokens"].to_numpy(dtype=float), nan=np.inf) if objective == "cost"
             else -np.nan_to_num(frame["tokens_per_s"].to_numpy(dtype=float), nan=0.0))
    points = np.stack([frame["loss_pct"].to_numpy(dtype=float), frame["memory_gib"].to_numpy(dtype=float), third], 1)
    feasible = frame["feasible"].to_numpy()
    front = np.zeros(len(frame), dtype=bool)
    idx = np.nonzero(feasible)[0]
    if not len(idx):
        return front
    p = points[idx]
    no_worse = (p[None, :, :] <= p[:, None, :]).all(axis=2)   # [i, j]: j is no worse than i everywhere
    better = (p[None, :, :] < p[:, None, :]).any(axis=2)
    dominated = (no_worse & better).any(axis=1)
    front[idx[~dominated]] = True
    return front


def _reason(row, objective: str, n_feasible: int, constraints: Constraints) -> str:
    local = constraints.is_local  # the executors' run on this machine: peak memory, timed forward
    lead = {"accuracy": "highest predicted quality", "cost": "lowest $ per 1M tokens",
            "speed": "fastest forward" if local else "fastest decode", "memory": "smallest memory"}[objective]
    parts = [f"{row['retained_pct']:.1f}% quality retained (80%: {row['retained_low_pct']:.1f}-"
             f"{row['retained_high_pct']:.1f}, {row['basis']})",
             f"{row['memory_gib']:.1f} GiB {'peak' if local else 'per GPU'}"]
    if not math.isnan(row["speedup"]):
        metric = "(forward latency)" if local else constraints.resolved_speedup_metric
        parts.append(f"{row['speedup']:.2f}x {metric}")
    if local and not math.isnan(row["latency_ms"]):
        parts.append(f"{row['latency_ms']:,.0f} ms forward")
    if not math.isnan(row["usd_per_1m_tokens"]):
        parts.append(f"${row['usd_per_1m_tokens']:,.2f}/1M tokens")
    return f"{lead} of {n_feasible} feasible: " + ", ".join(parts)


def _hint(frame, i: int, amounts: dict[str, np.ndarray]) -> str | None:
    """The feasible candidate that differs from row ``i`` in one axis with the least added loss."""
    feasible = frame["feasible"].to_numpy()
    if not feasible.any():
        return None
    same = np.stack([(frame[axis] == frame.at[i, axis]).to_numpy() for axis in _AXES], axis=1)
    one_off = feasible & (same.sum(axis=1) == len(_AXES) - 1)
    if not one_off.any():
        return None
    loss = frame["loss_pct"].to_numpy(dtype=float)
    options = np.nonzero(one_off)[0]
    best = int(options[np.argmin(loss[options])])
    axis = _AXES[int(np.argmin(same[best]))]
    value = frame.at[best, axis]
    change = _AXIS_WORDS[axis].format(value) if value != "-" else _AXIS_DEFAULTS[axis]
    only_memory = [name for name, amount in amounts.items() if amount[i] > 0] == ["max_memory_gb"]
    verdict = "it fits" if only_memory else "it meets every limit"
    delta = round(float(loss[best] - loss[i]), 1) + 0.0  # + 0.0: no "-0.0"
    return f"with {change} {verdict} at {delta:+.1f}% loss"


def _only(amounts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(violated [row, limit], rows fully checked that break exactly one limit)."""
    values = np.stack(list(amounts.values()), axis=1)
    known = ~np.isnan(values).any(axis=1)
    violated = np.nan_to_num(values, nan=0.0) > 0
    return violated, known & (violated.sum(axis=1) == 1)


def _binding(amounts: dict[str, np.ndarray]) -> str | None:
    """The limit that alone keeps the most candidates out (else the most violated one), with the counts."""
    if not amounts:
        return None
    violated, only = _only(amounts)
    names = list(amounts)
    alone = {name: int((only & violated[:, k]).sum()) for k, name in enumerate(names)}
    top = max(alone, key=alone.get)
    if alone[top]:
        return f"{top} (it alone keeps out {alone[top]} candidates that meet every other limit)"
    counts = {name: int(violated[:, k].sum()) for k, name in enumerate(names)}
    checked = {name: int((~np.isnan(amount)).sum()) for name, amount in amounts.items()}
    top = max(counts, key=counts.get)
    return f"{top} ({counts[top]} of the {checked[top]} candidates checked against it violate it)" if counts[top] \
        else None


def _relaxations(frame, amounts: dict[str, np.ndarray], limits: dict[str, float],
                 constraints: Constraints) -> list[str]:
    """For each limit: the smallest change of it alone that admits a candidate (best quality at that bound);
    for memory also the GPU count that would."""
    out = []
    if not amounts:
        return out
    stacked, only = _only(amounts)
    loss = frame["loss_pct"].to_numpy(dtype=float)
    scored = []
    for k, name in enumerate(amounts):
        rows = np.nonzero(only & stacked[:, k] & np.isfinite(amounts[name]))[0]
        if not len(rows):
            continue
        need = amounts[name][rows]
        pick = int(rows[np.lexsort((loss[rows], need))[0]])
        limit = LIMITS[name]
        new = admitting(limit, limits[name] + amounts[name][pick] * (1 if limit.kind == "max" else -1))
        if name == "max_memory_gb" and limits[name] < (constraints.max_memory_gb or math.inf):
            what = f"use a GPU with {format_value(limit, new)} usable (this one has {format_value(limit, limits[name])})"
        else:
            what = f"relax {name} from {format_value(limit, limits[name])} to {format_value(limit, new)}"
        scored.append((amounts[name][pick] / max(abs(limits[name]), 1e-12),
                       f"{what} to admit {frame.at[pick, 'strategy']} ({frame.at[pick, 'retained_pct']:.1f}% retained)"))
    if "max_memory_gb" in amounts and constraints.gpu is not None:
        k = list(amounts).index("max_memory_gb")
        gpus = frame["gpus_needed"].to_numpy()
        rows = np.nonzero(only & stacked[:, k] & (gpus > 0))[0]
        if len(rows):
            pick = int(rows[np.lexsort((loss[rows], gpus[rows]))[0]])
            n = int(gpus[pick])
            scored.append((n / constraints.gpus - 1, f"use {n} x {constraints.gpu} (gpus={n}) to admit "
                                                     f"{frame.at[pick, 'strategy']} "
                                                     f"({frame.at[pick, 'retained_pct']:.1f}% retained)"))
    return [text for _, text in sorted(scored)]
