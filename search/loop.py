"""The closed loop: predict, run the most informative candidates for real, refine, re-score, repeat.

``run_search(..., model_dir=DIR, execute_top=K, rounds=R)`` (:mod:`search.run`) runs :func:`run_loop`.
Round r = 1..R:

1. **Predicted trials.** The main study grows to ``ceil(n_trials * r / R)`` trials (``n_trials`` is the
   whole loop's budget). Round 1 samples the main study like a plain search. From round 2 the sampler
   must see the *re-scored* values, and Optuna never changes a finished trial's values, so round r
   samples a warm-started in-memory study: one trial per distinct strategy so far, with its latest
   values (measured quality loss / memory / latency where measured, else the re-scored prediction; a
   strategy that failed for real as infeasible), then its new trials are copied into the main study,
   with the prediction they were made with. The main study thus keeps every prediction as made; the
   latest one per strategy is in ``fitplan_rescored:*`` (see :mod:`search.measured`).
2. **Selection** (:func:`select_candidates`): K candidates from the current table, never one already
   measured. Stored before anything runs (``fitplan_selected:<r>``), so a resumed round runs the same.
3. **Execution**: ``search.execution.execute_jobs`` (isolated runs, ``workers`` at once, a job measured
   once even across resumes).
4. **Storage**: a :class:`~search.measured.MeasuredCandidate` per strategy in the study, and a
   :class:`~planner.accuracy.calibration.CalibrationRecord` per successful run in the calibration store
   (``calibration_dir``, default ``<out_dir>/calibration``), whose ``predicted_retained_pct`` is the
   prediction of the *uncalibrated* predictor (priors, or the profile) — the base the store's corrections
   apply to; the calibrated prediction of the time is in the study's measurement.
5. **Refine and re-score**: the store is reloaded (corrections refit) and every distinct strategy is
   re-scored; the table, the next selection and the next sampler use the new values.
6. **Predictor quality** (:class:`~search.measured.RoundReport`, ``fitplan_rounds``): the predictor of
   round r is the one fitted on rounds < r; it is scored on every measurement of rounds >= r (none of
   which it saw). Predictions of earlier predictor states are recomputed for each newly measured
   candidate from the store's records of earlier rounds, so a later round's candidates are held-out data
   for every earlier predictor.

Resume: the study records which rounds are done (``fitplan_loop_state``), each round's selection and
each measurement; re-running the same call continues where it stopped, and an execution that finished
is never run again.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InvalidRequestError
from search.measured import (LOOP_KEY, MEASURED_PREFIX, RESCORED_PREFIX, ROUND_ATTR, ROUNDS_KEY, SELECTED_PREFIX,
                             STATE_KEY, MeasuredCandidate, PredictedFigures, Rescored, RoundReport, digest,
                             number, study_items)
from search.objective import strategy_key, trial_record

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from search.results import SearchResult

MAX_EXECUTE_TOP = 64
MAX_ROUNDS = 20
MAX_WORKERS = 16
SOURCE_PREFIX = "fitplan search"
GIB = 2**30

# How far outside a limit a predicted-infeasible candidate may be and still be worth measuring: the
# prediction's own error there. Memory: CPU peak predictions land within a few % of the measured peak
# (issue 8's note: +1.9% on MiniLM nf4), GPU ones within ~10%; 15% covers both. Speed: issue 8's CPU
# latency errors reach about +-30% (run-to-run noise on a shared machine ~ +-15%). Quality uses the
# candidate's own 80% interval instead of a band.
SELECTION_BANDS = {"max_memory_gb": 0.15, "min_speedup": 0.30, "max_cost_per_hour": 0.0,
                   "max_cost_per_1m_tokens": 0.30, "min_tokens_per_s": 0.30}
# Loop settings a resumed study may change (they change how much is done, not what a measurement means).
RESUMABLE_CHANGES = ("execute_top", "rounds", "workers", "timeout_s", "baseline_run")
# Why the reference run is in the study (search.measured.MeasuredCandidate.selection).
REFERENCE_SELECTION = "reference: the uncompressed model, measured before the search (not a candidate)"
# Expected cost of a run that trains (a student, or fine-tuning) over a plain one until this study has
# measured both kinds (run_cost): MiniLM here, 209 s for a 0.25-ffn + depth-0.5 student under load against
# ~13 s for int8 / nf4 (benchmarks/closed_loop.py's first run, this machine shared).
TRAINING_COST_PRIOR = 16.0  # 209 s / 13 s
# A pick must be worth at least a plain run of a candidate just outside a limit with a 10% chance of meeting
# the quality limit and no interval or boundary bonus: FRONT_WEIGHT["near"] x (0.25 + 0.10) x 1. Below it
# (a hopeless candidate, or an expensive one worth little) the round executes fewer than K.
MIN_PICK_VALUE = 0.4 * (0.25 + 0.10)
# Per-execution timeout when none is given (execution_timeout): TIMEOUT_FACTOR x the run's expected seconds,
# at least MIN_TIMEOUT_S; DEFAULT_TIMEOUT_S when nothing tells the expected time yet. A shared 2-core machine
# runs 2-4x slower under load than idle (issue 8's note), so 10x keeps a slow but healthy run alive while a
# hung one (a deadlocked kernel, a swap storm) is stopped; the floor covers start-up (imports, model load).
TIMEOUT_FACTOR = 10.0
MIN_TIMEOUT_S = 300.0
DEFAULT_TIMEOUT_S = 3600.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0
# Weight of a candidate's place relative to the feasible front in the selection score.
FRONT_WEIGHT = {"pareto": 1.0, "feasible": 0.6, "near": 0.4}


# -- the loop's request -----------------------------------------------------------------------------
class LoopRequest(BaseModel):
    """What the loop executes and where (recorded in the study as ``fitplan_loop``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_dir: str
    model_kind: str
    execute_top: int = Field(ge=1, le=MAX_EXECUTE_TOP)
    rounds: int = Field(ge=1, le=MAX_ROUNDS)
    workers: int = Field(ge=1, le=MAX_WORKERS)
    evaluator: str = Field(description="the executors' evaluator name")
    metric: str = Field(description="the evaluator's metric (its family scales predicted quality)")
    eval_data: str | None = None
    device: str = "auto"
    out_dir: str
    calibration_dir: str
    timeout_s: float | None = Field(None, description="per-execution timeout, seconds (None: execution_timeout's "
                                    "default from the run's expected cost)")
    baseline_run: str | None = Field(None, description="result.json of the uncompressed model's measured run "
                                     "(executors.execute with no strategy): stored as the reference")

    @classmethod
    def build(cls, *, model: Any, model_dir: Any, execute_top: Any, rounds: Any, workers: Any, evaluator: Any,
              eval_data: Any, device: Any, out_dir: Any, calibration_dir: Any, calibration: Any,
              timeout_s: Any = None, baseline_run: Any = None) -> "LoopRequest":
        """Check every input before anything runs; each mistake is one InvalidRequestError line."""
        execute_top = _count("execute_top", execute_top, MAX_EXECUTE_TOP)
        rounds = _count("rounds", rounds, MAX_ROUNDS)
        workers = _count("workers", workers, MAX_WORKERS)
        if model_dir is None:
            if isinstance(model, (str, Path)) and Path(model).expanduser().is_dir():
                model_dir = model
            else:
                raise InvalidRequestError("execute_top needs model_dir: the model directory the executors run (the "
                                          f"model {model!r} is not a directory).")
        from planner.models.directory import check_model_dir

        directory = check_model_dir(model_dir)
        if evaluator is not None and not isinstance(evaluator, str):
            raise InvalidRequestError("evaluator must be a name for a search (perplexity, fidelity, accuracy); a "
                                      "function or object runs through executors.execute directly.")
        from executors.evaluate import check_evaluation_data, get_evaluator
        from executors.loading import check_device, model_kind

        kind = model_kind(directory)
        chosen = get_evaluator(evaluator, kind, data=eval_data)  # an unknown name fails here
        check_evaluation_data(chosen)  # a missing, unreadable or too small data file too (no tokenizer load)
        check_device(device)
        if out_dir is None:
            raise InvalidRequestError("execute_top needs out_dir: the directory for the executed runs and the "
                                      "calibration store.")
        out = Path(out_dir).expanduser().resolve()
        if calibration_dir is None and calibration is not None:
            calibration_dir = getattr(calibration, "directory", None) or calibration
        store_dir = Path(calibration_dir).expanduser().resolve() if calibration_dir is not None else out / "calibration"
        for name, path in (("out_dir", out), ("calibration_dir", store_dir)):
            if path.exists() and not path.is_dir():
                raise InvalidRequestError(f"{name} {str(path)!r} is a file; give a directory.")
        check_execution_timeout(timeout_s)
        if baseline_run is not None:
            baseline_run = str(reference_result(baseline_run, directory, chosen.name).result_path)
        return cls(model_dir=str(directory.resolve()), model_kind=kind, execute_top=execute_top, rounds=rounds,
                   workers=workers, evaluator=chosen.name, metric=chosen.metric,
                   eval_data=str(Path(eval_data).expanduser().resolve()) if eval_data is not None else None,
                   device=device, out_dir=str(out), calibration_dir=str(store_dir), timeout_s=timeout_s,
                   baseline_run=baseline_run)

    def open_store(self):
        """The calibration store (created empty when the directory does not exist)."""
        from planner.accuracy.calibration import CalibrationStore

        Path(self.calibration_dir).mkdir(parents=True, exist_ok=True)
        return CalibrationStore.load(self.calibration_dir)

    @property
    def runs_dir(self) -> Path:
        return Path(self.out_dir) / "runs"


def check_execution_timeout(value: Any) -> None:
    """None, or a number of seconds above 0 and at most MAX_TIMEOUT_S; else one InvalidRequestError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S):
        raise InvalidRequestError(f"execution_timeout must be a number of seconds above 0 and at most "
                                  f"{MAX_TIMEOUT_S:,.0f} (a week), got {value!r}; leave it out for a timeout from "
                                  f"the run's expected cost.")


def reference_result(path: Any, model_dir: Path, evaluator: str) -> Any:
    """The executors' ExecutionResult of a measured run of the uncompressed model (``baseline_run``: its
    result.json or run directory), checked: it must be an ok run of the identity strategy of the same model
    directory, measured with the loop's evaluator (otherwise its figures are no reference for the loop's)."""
    from pydantic import ValidationError

    from executors.result import ExecutionResult
    from planner.strategy import CompressionStrategy

    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "result.json"
    try:
        result = ExecutionResult.model_validate_json(file.read_text())
    except (OSError, ValidationError, ValueError) as error:
        detail = getattr(error, "strerror", None) or type(error).__name__
        raise InvalidRequestError(f"baseline_run {str(path)!r} is not a readable executors result.json ({detail}); "
                                  "give the result.json of `fitplan run MODEL_DIR` with no strategy.") from None
    if not CompressionStrategy.model_validate(result.strategy).is_identity:
        raise InvalidRequestError(f"baseline_run {str(path)!r} ran {result.strategy_summary!r}, not the uncompressed "
                                  "model (no strategy).")
    if result.status != "ok":
        raise InvalidRequestError(f"baseline_run {str(path)!r} failed ({result.reason}); it cannot be the reference.")
    if Path(result.model_dir).expanduser().resolve() != model_dir.resolve():
        raise InvalidRequestError(f"baseline_run {str(path)!r} measured {result.model_dir}, not {model_dir}.")
    used = result.quality.evaluator if result.quality is not None else None
    if used != evaluator:
        raise InvalidRequestError(f"baseline_run {str(path)!r} was evaluated with {used!r}, the loop with "
                                  f"{evaluator!r}; measure the baseline with the same evaluator.")
    return result.model_copy(update={"result_path": str(file.resolve())})


def _count(name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise InvalidRequestError(f"{name} must be a whole number from 1 to {limit}, got {value!r}.")
    return value


# -- selection ---------------------------------------------------------------------------------------
def _limit_value(row: dict[str, Any], name: str) -> float | None:
    """The table's predicted figure for a limit (optimistic end of the interval for quality)."""
    from planner.planning.limits import LIMITS

    if name == "max_accuracy_loss":
        high = number(row.get("quality_high_pct"))
        retained = high if high is not None else number(row.get("quality_retained_pct"))
        return None if retained is None else 100.0 - retained
    column = LIMITS[name].column
    return number(row.get("quality_loss_pct" if column == "loss_pct" else column))


def plausibly_feasible(row: dict[str, Any], limits: dict[str, float]) -> bool:
    """Within every limit, or outside by less than the prediction's own error (the quality interval's
    optimistic end; SELECTION_BANDS for the other limits)."""
    from planner.planning.limits import LIMITS

    if row.get("feasible"):
        return True
    for name, bound in limits.items():
        if name not in LIMITS:
            continue
        value = _limit_value(row, name)
        if value is None:
            return False
        band = SELECTION_BANDS.get(name, 0.0)
        if LIMITS[name].kind == "max" and value > bound * (1 + band) + 1e-12:
            return False
        if LIMITS[name].kind == "min" and value < bound * (1 - band) - 1e-12:
            return False
    return True


def boundary_closeness(row: dict[str, Any], limits: dict[str, float]) -> float:
    """0..1: how close the candidate is to a constraint boundary, relative to its uncertainty there (1 =
    the quality interval straddles the accuracy limit at its centre, or a figure sits on its limit)."""
    from planner.planning.limits import LIMITS

    best = 0.0
    for name, bound in limits.items():
        if name not in LIMITS:
            continue
        if name == "max_accuracy_loss":
            retained, low, high = (number(row.get(c)) for c in ("quality_retained_pct", "quality_low_pct",
                                                              "quality_high_pct"))
            if retained is None:
                continue
            line = 100.0 - bound
            width = max((high or retained) - (low or retained), 0.5)
            distance = abs(retained - line)
            if low is not None and high is not None and low <= line <= high:
                distance = 0.5 * distance  # the interval straddles the limit
            best = max(best, math.exp(-distance / width))
            continue
        value = _limit_value(row, name)
        if value is None or not bound:
            continue
        band = SELECTION_BANDS.get(name) or 0.10
        best = max(best, math.exp(-abs(value - bound) / abs(bound) / band))
    return best


def feasible_chance(row: dict[str, Any], limits: dict[str, float]) -> float:
    """Rough chance that the measured quality meets ``max_accuracy_loss``: the 80% interval read as a
    normal distribution in retained % (sigma = width / 2.563); 1 without that limit or an interval."""
    bound = limits.get("max_accuracy_loss")
    retained, low, high = (number(row.get(c)) for c in ("quality_retained_pct", "quality_low_pct", "quality_high_pct"))
    if bound is None or retained is None:
        return 1.0
    sigma = ((high - low) / 2.563) if low is not None and high is not None and high > low else 0.0
    margin = retained - (100.0 - bound)
    if sigma <= 0:
        return 1.0 if margin >= 0 else 0.0
    return 0.5 * (1.0 + math.erf(margin / sigma / math.sqrt(2.0)))


def _coordinates(frame: "pd.DataFrame") -> "list[list[float]]":
    """Normalised predicted objective coordinates (quality loss, memory, latency or speedup) for spread."""
    import numpy as np

    columns = [c for c in ("quality_loss_pct", "memory_gib", "latency_ms", "speedup") if c in frame]
    data = []
    for column in columns:
        values = np.array([number(v) if number(v) is not None else np.nan for v in frame[column]], dtype=float)
        if np.all(np.isnan(values)):
            continue
        low, high = np.nanmin(values), np.nanmax(values)
        scale = (high - low) or 1.0
        data.append(np.nan_to_num((values - low) / scale, nan=0.5))
    if not data:
        return [[0.0] for _ in range(len(frame))]
    return np.stack(data, axis=1).tolist()


def select_candidates(table: "pd.DataFrame", k: int, limits: dict[str, float], *,
                      exclude: set[str] | frozenset[str] = frozenset(),
                      cost: "Callable[[dict[str, Any]], float] | None" = None) -> "pd.DataFrame":
    """The ``k`` table rows to execute next, with a ``selection`` column saying why.

    Never a row already measured (``measured_status`` set), nor the uncompressed reference (``reference``
    True: what quality is measured against, not a candidate; search.results), nor one whose
    ``strategy_json`` is in ``exclude``. The pool is every *plausibly feasible* row (:func:`plausibly_feasible`: feasible, or
    outside a limit by less than the prediction's error there). The first pick is the current
    recommendation (the top-ranked feasible row), because a verified recommendation is the loop's goal.
    The others are picked greedily by ``value x (distance + 0.05)``:

    - value = front weight (Pareto 1.0, other feasible 0.6, near a boundary 0.4) x (0.25 +
      :func:`feasible_chance`) x (1 + interval width / the widest in the pool + :func:`boundary_closeness`):
      wide intervals and candidates whose verdict a measurement could flip change the ranking most, but a
      candidate that is very likely to miss the quality limit is worth little even with a wide interval;
    - distance = the smallest distance, in predicted objectives normalised to the pool's range, to the
      rows already picked or measured: the picks spread along the front instead of clustering.

    ``cost(row)``: the relative cost of executing a row (1 = a typical run; :func:`run_cost`); the
    value is divided by it, so a candidate that trains a student must be worth that much more. A pick worth
    less than MIN_PICK_VALUE is not made (the recommendation excepted): fewer than ``k`` rows come back,
    and the frame's ``attrs["shortfall"]`` says why. Ties go to the better rank. ``limits``:
    ``Constraints.active_limits()``.
    """
    import pandas as pd

    if k < 1 or table is None or table.empty:
        return table.head(0).assign(selection=[]) if table is not None else pd.DataFrame()
    measured_mask = table["measured_status"].notna() if "measured_status" in table else pd.Series(False, table.index)
    rows = table.to_dict(orient="records")
    pool = [i for i, row in enumerate(rows)
            if not measured_mask.iloc[i] and row.get("strategy_json") not in exclude and not row.get("reference")
            and plausibly_feasible(row, limits)]
    if not pool:
        empty = table.head(0).assign(selection=[])
        empty.attrs["shortfall"] = (f"no unmeasured candidate is plausibly feasible ({int(measured_mask.sum())} "
                                    "measured; every other one is predicted to miss a limit by more than the "
                                    "prediction's error there)")
        return empty
    coords = _coordinates(table)
    widths = {i: max(0.0, (number(rows[i].get("quality_high_pct")) or 0.0) - (number(rows[i].get("quality_low_pct"))
                                                                             or 0.0)) for i in pool}
    widest = max(widths.values()) or 1.0
    anchors = [coords[i] for i in range(len(rows)) if measured_mask.iloc[i]]
    chosen: list[tuple[int, str]] = []
    feasible = [i for i in pool if rows[i].get("feasible")]
    if feasible:
        first = min(feasible, key=lambda i: rows[i].get("rank") or i)
        chosen.append((first, "the current recommendation"))
        anchors.append(coords[first])

    def value(i: int) -> tuple[float, str]:
        row = rows[i]
        place = "pareto" if row.get("pareto") else "feasible" if row.get("feasible") else "near"
        closeness = boundary_closeness(row, limits)
        width = widths[i] / widest
        why = [{"pareto": "on the front", "feasible": "feasible", "near": "just outside a limit"}[place]]
        if width >= 0.5:
            why.append(f"wide interval ({widths[i]:.1f} pts)")
        if closeness >= 0.5:
            why.append("near a constraint boundary")
        chance = feasible_chance(row, limits)
        price = max(cost(row), 1e-6) if cost is not None else 1.0
        if price > 1.5:
            why.append(f"costs ~{price:.0f}x a plain run")
        return FRONT_WEIGHT[place] * (0.25 + chance) * (1.0 + width + closeness) / price, ", ".join(why)

    scored = {i: value(i) for i in pool}
    while len(chosen) < k:
        left = [i for i in pool if i not in {c for c, _ in chosen} and scored[i][0] >= MIN_PICK_VALUE]
        if not left:
            break

        def score(i: int) -> tuple[float, int]:
            distance = min((math.dist(coords[i], a) for a in anchors), default=1.0)
            return scored[i][0] * (distance + 0.05), -(rows[i].get("rank") or i)

        pick = max(left, key=score)
        chosen.append((pick, scored[pick][1]))
        anchors.append(coords[pick])
    frame = table.iloc[[i for i, _ in chosen]].copy()
    frame["selection"] = [why for _, why in chosen]
    if len(chosen) < k:
        rest = len(pool) - len(chosen)
        frame.attrs["shortfall"] = (
            f"the other {rest} plausibly feasible candidate{'s are' if rest != 1 else ' is'} each worth less than "
            "a run (likely to miss a limit, or a costly run)" if rest else
            f"every plausibly feasible candidate ({len(pool)} unmeasured) is picked")
    return frame


def trains(strategy: Any) -> bool:
    """The run trains something (a distilled student, or fine-tuning between pruning steps)."""
    return strategy.distillation is not None or bool(strategy.sparsity and strategy.sparsity.finetune_steps)


def run_cost(measurements: "list[MeasuredCandidate]"):
    """``cost(row)`` for :func:`select_candidates`: the expected seconds of a run that trains over a plain
    one, from this study's measured runs of each kind (median seconds); until both kinds are measured,
    TRAINING_COST_PRIOR (measured here: a MiniLM student run took 209 s under load, a quantized one
    13 s)."""
    from planner.strategy import CompressionStrategy

    ratio = _run_seconds(measurements)[1]

    def cost(row: dict[str, Any]) -> float:
        strategy = CompressionStrategy.model_validate_json(row["strategy_json"])
        return max(1.0, ratio) if trains(strategy) else 1.0

    return cost


def _run_seconds(measurements: "list[MeasuredCandidate]") -> tuple[float | None, float]:
    """(median seconds of this study's runs that train nothing (None: none yet), expected seconds of a
    training run over a plain one: measured when both kinds were run, else TRAINING_COST_PRIOR)."""
    import statistics

    from planner.strategy import CompressionStrategy

    seconds: dict[bool, list[float]] = {True: [], False: []}
    for m in measurements:
        if m.seconds:
            seconds[trains(CompressionStrategy.model_validate_json(m.key))].append(m.seconds)
    plain = statistics.median(seconds[False]) if seconds[False] else None
    ratio = plain and seconds[True] and statistics.median(seconds[True]) / plain
    return plain, ratio or TRAINING_COST_PRIOR


def execution_timeout(strategy: Any, measurements: "list[MeasuredCandidate]", *, given: float | None = None,
                      profile_seconds: float | None = None) -> tuple[float, str]:
    """The timeout of one execution of ``strategy`` and where it comes from (one phrase).

    ``given`` (run_search's ``execution_timeout``, ``--execution-timeout``) wins. Otherwise TIMEOUT_FACTOR x
    the run's expected seconds, at least MIN_TIMEOUT_S: the expected seconds of a plain run are the median
    of this study's measured runs (the reference run of the uncompressed model included), else the
    sensitivity profile's cost (``profile_seconds``: loading the model + two evaluations, the baseline's and
    the candidate's); a run that trains costs the measured (or prior) training ratio times that. With no
    expected cost at all, DEFAULT_TIMEOUT_S.
    """
    if given is not None:
        return float(given), "given"
    plain, ratio = _run_seconds(measurements)
    source = "this study's runs"
    if plain is None and profile_seconds:
        plain, source = profile_seconds, "the profile's cost"
    if plain is None:
        return DEFAULT_TIMEOUT_S, "default: no expected cost known yet"
    expected = plain * (max(1.0, ratio) if trains(strategy) else 1.0)
    return max(MIN_TIMEOUT_S, TIMEOUT_FACTOR * expected), f"{TIMEOUT_FACTOR:g}x the expected {expected:.0f} s ({source})"


# -- predictor quality ------------------------------------------------------------------------------
def predictor_quality(measurements: list[MeasuredCandidate], state: int) -> dict[str, Any]:
    """Scores of predictor state ``state`` on the successful measurements of rounds >= state (held out):
    quality-loss MAE (points), Spearman of predicted vs measured loss, interval coverage, median
    |error| of memory and latency (%)."""
    from planner.accuracy.agreement import predictor_agreement

    held = [m for m in measurements if m.ok and m.round >= state and state in m.predicted
            and m.quality_retained_pct is not None and m.predicted[state].quality_retained_pct is not None]
    before = [m.predicted[state] for m in held]
    quality = predictor_agreement(
        [100.0 - p.quality_retained_pct for p in before], [100.0 - m.quality_retained_pct for m in held],
        low=[None if p.quality_high_pct is None else 100.0 - p.quality_high_pct for p in before],
        high=[None if p.quality_low_pct is None else 100.0 - p.quality_low_pct for p in before])
    # memory and latency: relative errors, % of the measured value
    memory = predictor_agreement([_pct(p.memory_gib, m.memory_gib) for p, m in zip(before, held)], [0.0] * len(held))
    latency = predictor_agreement([_pct(p.latency_ms, m.latency_ms) for p, m in zip(before, held)], [0.0] * len(held))
    return {"held_out": len(held), "quality_loss_mae": quality.mae, "quality_spearman": quality.spearman,
            "quality_coverage": quality.coverage, "memory_error_pct": memory.median_abs_error,
            "latency_error_pct": latency.median_abs_error}


def _pct(predicted: float | None, measured: float | None) -> float | None:
    """100 x (predicted - measured) / measured (None when either is missing)."""
    return None if not predicted or not measured else 100.0 * (predicted - measured) / measured


# -- predictor states --------------------------------------------------------------------------------
def _source(study_name: str, round_: int, key: str) -> str:
    return f"{SOURCE_PREFIX} {study_name} round {round_} {digest(key)}"


def _record_round(record: Any, study_name: str) -> int | None:
    """The loop round that produced a calibration record of this study (None: from elsewhere)."""
    prefix = f"{SOURCE_PREFIX} {study_name} round "
    if not str(record.source).startswith(prefix):
        return None
    try:
        return int(str(record.source)[len(prefix):].split(" ", 1)[0])
    except ValueError:
        return None


class Predictors:
    """The scorer of each predictor state: state j = the base predictor (priors or profile) with the
    calibration records from outside this search and this search's records of rounds < j."""

    def __init__(self, make_scorer, store, study_name: str, family: str):  # noqa: ANN001
        self.make_scorer = make_scorer
        self.store = store
        self.study_name = study_name
        self.family = family
        self._scorers: dict[int, Any] = {}
        self.base = make_scorer(None)

    def reload(self, store) -> None:  # noqa: ANN001
        self.store = store
        self._scorers.clear()

    def records(self, state: int) -> list:
        out = []
        for record in self.store.records:
            made_in = _record_round(record, self.study_name)
            if made_in is None or made_in < state:
                out.append(record)
        return out

    def fit_records(self, state: int) -> int:
        return sum(1 for r in self.records(state) if r.family == self.family)

    def scorer(self, state: int):
        if state not in self._scorers:
            from planner.accuracy.calibration import CalibrationStore

            records = self.records(state)
            store = CalibrationStore(records, self.store.directory) if records else None
            self._scorers[state] = self.make_scorer(store)
        return self._scorers[state]

    def describe(self, state: int, base: str) -> str:
        n = self.fit_records(state)
        return f"{base}, calibrated on {n} {self.family} record{'s' if n != 1 else ''}" if n else base


def figures(row: dict[str, Any]) -> PredictedFigures:
    """The predicted figures of a scorer row (search.candidates.candidate_evaluator)."""
    prediction = row.get("prediction") or {}
    quality = prediction.get("quality") or {}
    return PredictedFigures(quality_retained_pct=quality.get("retained_pct"), quality_low_pct=quality.get("low_pct"),
                            quality_high_pct=quality.get("high_pct"), basis=quality.get("basis"),
                            memory_gib=prediction.get("memory_gib"), latency_ms=prediction.get("latency_ms"))


# -- execution ---------------------------------------------------------------------------------------
def execute(storage: Any, study_name: str, jobs: list[dict[str, Any]], request: LoopRequest, *,
            progress: bool) -> list[Any]:
    """Run the jobs through ``search.execution.execute_jobs`` (the queue in ``<study>:execute``: W workers,
    each job measured once across calls and resumes, a killed worker's job re-queued)."""
    from search.execution import ExecutionJob, execute_jobs

    return execute_jobs(storage, study_name, [ExecutionJob(**job) for job in jobs], model_dir=request.model_dir,
                        evaluator=request.evaluator, eval_data=request.eval_data, out_dir=str(request.runs_dir),
                        workers=request.workers, device=request.device, timeout_s=request.timeout_s,
                        progress=progress)


# -- the loop ----------------------------------------------------------------------------------------
class Loop:
    """One closed-loop search on an open study (see the module docstring). Built by search.run."""

    def __init__(self, *, study: "optuna.Study", storage: Any, spec: Any, constraints: Any, space: Any, objectives: tuple,
                 request: LoopRequest, make_scorer, suggest, n_trials: int, sampler_name: str,
                 seed: int | None, make_sampler, progress: bool, base_label: str,
                 profile_seconds: float | None = None):  # noqa: ANN001
        self.study = study
        self.storage = storage  # the RDB storage search.execution's workers share
        self.spec = spec
        self.constraints = constraints
        self.limits = constraints.active_limits()
        self.space = space
        self.objectives = objectives
        self.request = request
        self.suggest = suggest
        self.n_trials = n_trials
        self.sampler_name = sampler_name
        self.seed = seed
        self.make_sampler = make_sampler
        self.progress = progress
        self.base_label = base_label
        self.profile_seconds = profile_seconds  # expected seconds of a plain run from the profile's cost
        self.predictors = Predictors(make_scorer, request.open_store(), study.study_name, spec.model_type)
        self.interrupted = False
        self.evaluations = 0
        # The name calibration records carry: the planner's name of the device when the search plans for
        # the machine the executors measure on (target local), so its memory/latency corrections apply;
        # otherwise the execution device ('cpu', 'cuda:0'), which never matches a planned GPU.
        if constraints.is_local:
            from planner.planning.local import local_device

            self.device_name = local_device(request.device).name
        else:
            self.device_name = request.device

    # -- study attributes ----------------------------------------------------------------------
    def _attrs(self) -> dict[str, Any]:
        return self.study._storage.get_study_user_attrs(self.study._study_id)  # noqa: SLF001 - fresh read

    def _set(self, key: str, value: Any) -> None:
        self.study.set_user_attr(key, json.loads(json.dumps(value, default=str)))

    def measurements(self) -> dict[str, MeasuredCandidate]:
        return study_items(self._attrs(), MEASURED_PREFIX, MeasuredCandidate)

    def say(self, text: str) -> None:
        if self.progress:
            print(f"fitplan search: {text}", file=sys.stderr, flush=True)

    # -- steps ---------------------------------------------------------------------------------
    def run(self, optimize) -> None:  # noqa: ANN001 - search.run's optimiser of the main study
        """All rounds; ``optimize(study, objective, target)`` grows a study to ``target`` trials."""
        recorded = self._attrs().get(LOOP_KEY)
        mine = self.request.model_dump(mode="json")
        # A resume may change how much is done (K, rounds, workers, timeout), not what is measured.
        differing = sorted(k for k in mine if k not in RESUMABLE_CHANGES and recorded and recorded.get(k) != mine[k])
        if differing:
            raise InvalidRequestError(f"study {self.study.study_name!r} ran a loop with a different "
                                      f"{', '.join(differing)}; repeat its original command to resume it, or give "
                                      "another --study name.")
        self._set(LOOP_KEY, mine)
        done = int((self._attrs().get(STATE_KEY) or {}).get("rounds_done", 0))
        self._store_reference(done + 1)
        self.evaluations = sum(1 for m in self.measurements().values())
        for r in range(done + 1, self.request.rounds + 1):
            start = time.monotonic()
            target = math.ceil(self.n_trials * r / self.request.rounds)
            self.say(f"round {r}/{self.request.rounds}: predicted trials up to {target}")
            if not self._sample(r, target, optimize):
                self.interrupted = True
                return
            self._execute_round(r)
            self._refine(r, time.monotonic() - start)
            self._set(STATE_KEY, {"rounds_done": r})

    def _store_reference(self, state: int) -> None:
        """The given measured baseline run (``request.baseline_run``) into the study as the reference's
        measurement (round 0, before any selection), with its prediction, so the table shows it and the
        loop never executes the uncompressed model again (e.g. for a measured speedup)."""
        from planner.strategy import CompressionStrategy
        from search.execution import ExecutionJob, Measurement

        key = strategy_key(CompressionStrategy())
        if self.request.baseline_run is None or digest(key) in self.measurements():
            return
        result = reference_result(self.request.baseline_run, Path(self.request.model_dir), self.request.evaluator)
        m = Measurement.from_result(ExecutionJob(key=key, strategy_json=key), result, worker="reference run",
                                    seconds=result.wall_seconds or 0.0)
        self._set(MEASURED_PREFIX + digest(key), MeasuredCandidate(
            key=key, summary="baseline", round=0, selection=REFERENCE_SELECTION, status=m.status, reason=m.reason,
            quality_retained_pct=m.quality_retained_pct, memory_gib=m.memory_gib, latency_ms=m.latency_ms,
            run=m.result_path, worker=m.worker, seconds=m.seconds).model_dump(mode="json"))
        self._rescore(self.predictors.scorer(state), key, state)
        self.say(f"reference: the uncompressed model's run {result.run_dir} ({m.memory_gib or float('nan'):.3f} GiB, "
                 f"{m.latency_ms or float('nan'):.1f} ms)")

    def _objective(self, scorer, r: int):  # noqa: ANN001
        def objective(trial):  # noqa: ANN001
            trial.set_user_attr(ROUND_ATTR, r)
            return scorer(trial, self.suggest(trial))

        return objective

    def _sample(self, r: int, target: int, optimize) -> bool:  # noqa: ANN001
        """Grow the main study to ``target`` trials; False when interrupted."""
        if r == 1:
            return optimize(self.study, self._objective(self.predictors.scorer(1), 1), target)
        have = len(self.study.get_trials(deepcopy=False))
        if have >= target:
            return True
        warm = self._warm_study(r)
        scorer = self.predictors.scorer(r)
        import optuna

        def copy(study, trial) -> None:  # noqa: ANN001 - copy each new trial into the main study at once
            if trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL):
                self.study.add_trial(optuna.trial.create_trial(
                    state=trial.state, params=trial.params, distributions=trial.distributions,
                    values=trial.values if trial.state == optuna.trial.TrialState.COMPLETE else None,
                    user_attrs=trial.user_attrs, system_attrs=trial.system_attrs))
        return optimize(warm, self._objective(scorer, r), len(warm.trials) + target - have, callback=copy)

    def _warm_study(self, r: int) -> "optuna.Study":
        """An in-memory study with one trial per distinct strategy at its latest values (module docstring)."""
        import optuna

        from search.candidates import table_row

        sampler = self.make_sampler(self.sampler_name, seed=None if self.seed is None else self.seed + r,
                                    n_objectives=len(self.objectives), n_trials=self.n_trials)
        warm = optuna.create_study(directions=[o.direction for o in self.objectives], sampler=sampler)
        ranking = self.result().ranking
        seen: set[str] = set()
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            prediction = trial_record(trial).get("prediction")
            if not prediction:
                continue
            sj = table_row(prediction, [])["strategy_json"]
            if sj in seen or sj not in ranking:
                continue
            seen.add(sj)
            values, violation = ranking[sj]
            # Feasible: 0; infeasible: its relative excess; failed for real: far outside.
            violation = 1e6 if math.isinf(violation) else max(0.0, violation)
            warm.add_trial(optuna.trial.create_trial(params=trial.params, distributions=trial.distributions,
                                                     values=values, constraints={"violation": violation}))
        return warm

    def _execute_round(self, r: int) -> None:
        from planner.strategy import CompressionStrategy

        attrs = self._attrs()
        measured = study_items(attrs, MEASURED_PREFIX, MeasuredCandidate)
        selection = attrs.get(f"{SELECTED_PREFIX}{r}")
        if selection is None:
            selection = self._select(r, measured)
            self._set(f"{SELECTED_PREFIX}{r}", selection)
        todo = [s for s in selection if digest(s["key"]) not in measured]
        if not todo:
            return
        measured_list = list(measured.values())
        for s in todo:
            s["timeout_s"], s["timeout_source"] = execution_timeout(
                CompressionStrategy.model_validate_json(s["key"]), measured_list, given=self.request.timeout_s,
                profile_seconds=self.profile_seconds)
            self.say(f"round {r}: executing {s['summary']} ({s['selection']}; timeout {s['timeout_s']:.0f} s: "
                     f"{s['timeout_source']})")
        jobs = [{"key": s["key"], "strategy_json": s["key"], "round": r, "trial": s.get("trial"),
                 "timeout_s": s["timeout_s"]} for s in todo]
        results = execute(self.storage, self.study.study_name, jobs, self.request, progress=self.progress)
        by_key = {s["key"]: s for s in todo}
        for m in results:
            chosen = by_key.get(m.key)
            if chosen is None:
                continue
            self._store(r, chosen, m)

    def _select(self, r: int, measured: dict[str, MeasuredCandidate]) -> list[dict[str, Any]]:
        """This round's picks, with the prediction of every predictor state 1..r for each."""
        from planner.strategy import CompressionStrategy

        table = self.result().table
        picks = select_candidates(table, self.request.execute_top, self.limits,
                                  cost=run_cost(list(measured.values())))
        if "shortfall" in picks.attrs:
            self.say(f"round {r}: {len(picks)} of {self.request.execute_top} candidates to execute: "
                     f"{picks.attrs['shortfall']}")
        out = []
        baseline = strategy_key(CompressionStrategy())
        if "min_speedup" in self.limits and digest(baseline) not in measured:
            # A measured speedup needs the uncompressed model's measured latency on this device.
            out.append({"key": baseline, "summary": "uncompressed baseline", "trial": None,
                        "selection": "reference: the uncompressed model's latency, to measure the speedup"})
        for row in picks.to_dict(orient="records"):
            key = strategy_key(CompressionStrategy.model_validate_json(row["strategy_json"]))
            out.append({"key": key, "summary": row["strategy"], "trial": _int(row.get("trial")),
                        "selection": row["selection"]})
        for item in out:
            strategy = CompressionStrategy.model_validate_json(item["key"])
            item["predicted"] = {str(j): figures(self.predictors.scorer(j).row(strategy)).model_dump()
                                 for j in range(1, r + 1)}
        return out

    def _store(self, r: int, chosen: dict[str, Any], m: Any) -> None:
        """The measurement into the study, and (when ok) a calibration record into the store."""
        from planner.accuracy.calibration import CalibrationRecord
        from planner.accuracy.metrics import metric_family
        from planner.strategy import CompressionStrategy

        measurement = MeasuredCandidate(
            key=chosen["key"], summary=chosen["summary"], round=r, trial=chosen.get("trial"),
            selection=chosen["selection"], status=m.status, reason=m.reason,
            quality_retained_pct=m.quality_retained_pct, memory_gib=m.memory_gib, latency_ms=m.latency_ms,
            run=m.result_path, worker=m.worker, seconds=m.seconds, timeout_s=chosen.get("timeout_s"),
            predicted={int(j): PredictedFigures(**p) for j, p in (chosen.get("predicted") or {}).items()})
        source = _source(self.study.study_name, r, chosen["key"])
        store = self.predictors.store
        strategy = CompressionStrategy.model_validate_json(chosen["key"])
        if (measurement.ok and measurement.quality_retained_pct and measurement.quality_retained_pct > 0
                and not strategy.is_identity and not any(rec.source == source for rec in store.records)):
            base = figures(self.predictors.base.row(strategy))  # uncorrected: what corrections apply to
            store.append(CalibrationRecord(
                strategy=json.loads(chosen["key"]), model_name=self.spec.name, family=self.spec.model_type,
                params=self.spec.params.total, evaluator=self.request.evaluator, metric=self.request.metric,
                metric_family=metric_family(self.request.metric),
                measured_retained_pct=measurement.quality_retained_pct,
                predicted_retained_pct=base.quality_retained_pct, prediction_source="recorded",
                predicted_memory_bytes=round(base.memory_gib * GIB) if base.memory_gib else None,
                predicted_latency_ms=base.latency_ms or None, device=self.device_name,
                measured_memory_bytes=round(measurement.memory_gib * GIB) if measurement.memory_gib else None,
                measured_latency_ms=measurement.latency_ms, source=source))
        self._set(MEASURED_PREFIX + digest(chosen["key"]), measurement.model_dump(mode="json"))
        self.evaluations += 1
        if measurement.ok:
            self.say(f"round {r}: measured {chosen['summary']}: quality {measurement.quality_retained_pct:.1f}% "
                     f"(predicted {measurement.predicted[r].quality_retained_pct or float('nan'):.1f}%), "
                     f"memory {measurement.memory_gib or float('nan'):.3f} GiB, "
                     f"latency {measurement.latency_ms or float('nan'):.1f} ms")
        else:
            self.say(f"round {r}: {chosen['summary']} failed for real: {measurement.reason}")

    def _refine(self, r: int, seconds: float) -> None:
        """Reload the store, re-score every distinct strategy, and update the round reports."""
        from planner.strategy import CompressionStrategy

        self.predictors.reload(self.request.open_store())
        scorer = self.predictors.scorer(r + 1)
        import optuna

        seen: set[str] = set()
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = trial_record(trial).get("strategy")
            if not key or key in seen:
                continue
            seen.add(key)
            self._rescore(scorer, key, r + 1)
        reference = strategy_key(CompressionStrategy())
        if reference not in seen and digest(reference) in self.measurements():
            self._rescore(scorer, reference, r + 1)  # the reference run no trial proposed
        self._report(r, seconds)

    def _rescore(self, scorer, key: str, state: int) -> None:  # noqa: ANN001 - a TrialScorer
        """Store ``key``'s prediction by predictor state ``state`` (``fitplan_rescored:<digest>``)."""
        from planner.strategy import CompressionStrategy

        strategy = CompressionStrategy.model_validate_json(key)
        row = scorer.row(strategy)
        values = [o.value(row) for o in self.objectives]
        record = {"strategy": key, "summary": strategy.summary(), "prediction": row["prediction"],
                  "violations": row["violations"], "constraint_values": row["constraint_values"]}
        self._set(RESCORED_PREFIX + digest(key), Rescored(
            round=state, record=record, values=None if any(v is None for v in values) else values,
            violation=sum(row["constraint_values"].values())).model_dump(mode="json"))

    def _report(self, r: int, seconds: float) -> None:
        attrs = self._attrs()
        measured = list(study_items(attrs, MEASURED_PREFIX, MeasuredCandidate).values())
        previous = {rep["round"]: rep for rep in attrs.get(ROUNDS_KEY) or []}
        result = self.result()
        best = result.best
        reports = []
        for j in range(1, r + 1):
            this_round = [m for m in measured if m.round == j]
            earlier = previous.get(j) or {}
            report = RoundReport(
                round=j, predictor=self.predictors.describe(j, self.base_label),
                fit_records=self.predictors.fit_records(j), **predictor_quality(measured, j),
                executed=len(this_round), failed=sum(1 for m in this_round if not m.ok),
                evaluations=sum(1 for m in measured if m.round <= j),
                recommendation=earlier.get("recommendation") if j < r else (best or {}).get("strategy"),
                recommendation_verified=bool(earlier.get("recommendation_verified")) if j < r
                else result.best_is_verified,
                seconds=earlier.get("seconds") if j < r else seconds)
            reports.append(report)
        self._set(ROUNDS_KEY, [rep.model_dump(mode="json") for rep in reports])
        last = reports[-1]
        first = reports[0]
        mae = "n/a" if first.quality_loss_mae is None else f"{first.quality_loss_mae:.2f} pts"
        if last.recommendation_verified:
            status = "verified"
        elif best is not None and best.get("verified"):
            status = "verified; an unmeasured candidate ranks above it"
        else:
            status = "not verified: predicted only"
        self.say(f"round {r} done: {last.executed} executed ({last.failed} failed), {last.evaluations} in all; "
                 f"round-1 predictor MAE {mae} on {first.held_out} held out; recommendation "
                 f"{last.recommendation or 'none'}" + (f" ({status})" if last.recommendation else ""))

    def result(self, **kwargs: Any) -> "SearchResult":
        from search.results import result_from_study

        return result_from_study(self.study, **kwargs)


def _int(value: Any) -> int | None:
    value = number(value)
    return None if value is None else int(value)


__all__ = ["Loop", "LoopRequest", "Predictors", "boundary_closeness", "feasible_chance", "plausibly_feasible",
           "predictor_quality", "select_candidates"]
