"""``search.run_search``: an Optuna multi-objective search over compression strategies.

One trial = one strategy from the :class:`~search.space.SearchSpace`, scored by the planner (no torch,
milliseconds). The study (SQLite file, PostgreSQL, or in memory) is the record: re-running with the same
study name resumes it, several processes on one storage cooperate on it (``n_trials`` is the study's
total budget, counted over every worker), and Ctrl-C stops cleanly with every finished trial saved.

Samplers (``sampler=``): ``nsga2`` (Optuna's NSGA-II: genetic, multi-objective, constraint-aware),
``tpe`` (multi-objective TPE, constraint-aware), ``gp`` (Gaussian process; needs torch), ``random``,
and ``auto``: what measured best in ``benchmarks/search_efficiency.py``. On a 7,182-point space TPE
reached 95% of the exhaustive front's hypervolume in a median of 100 trials, NSGA-II in 380, random not
within 500; but multivariate TPE's cost per trial grows with the trials so far (1,000 trials on SQLite:
TPE 135 s, NSGA-II 43 s, random 31 s on this machine), so ``auto`` = TPE up to ``AUTO_TPE_MAX_TRIALS``
trials and NSGA-II for longer searches.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from planner.errors import FitplanError, InvalidRequestError
from search.objective import TrialScorer, default_objectives, resolve_objectives, trial_record
from search.results import SearchResult, result_from_study
from search.space import SearchSpace

SAMPLERS = ("auto", "nsga2", "tpe", "gp", "random")
# ``auto`` (see the module docstring): TPE for budgets up to this many trials, NSGA-II beyond.
AUTO_TPE_MAX_TRIALS = 500
MAX_TRIALS = 1_000_000
# Weight budgets (average stored bits per block weight) sampled when a sensitivity profile drives the
# per-block allocation (search.allocator).
DEFAULT_BIT_BUDGETS = (2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 8.0, 9.0)


def _load_profile(profile: Any):
    """A SensitivityProfile from itself or a path (None stays None)."""
    if profile is None:
        return None
    from planner.accuracy.profile import SensitivityProfile

    return profile if isinstance(profile, SensitivityProfile) else SensitivityProfile.load(profile)


def make_sampler(name: str, *, seed: int | None, n_objectives: int, n_trials: int = 200,
                 population: int | None = None):
    """An Optuna sampler by fitplan's name for it (constraints read from ``trial.set_constraint``);
    ``n_trials`` (the study's budget) decides what ``auto`` is."""
    import optuna

    key = (name or "").strip().lower()
    if key not in SAMPLERS:
        from hardware_db.names import did_you_mean

        raise InvalidRequestError(f"unknown sampler {name!r}.{did_you_mean(key, SAMPLERS)} Allowed: "
                                  f"{', '.join(SAMPLERS)}.")
    if key == "auto":
        key = "tpe" if n_trials <= AUTO_TPE_MAX_TRIALS else "nsga2"
    if key == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population or 40)
    if key == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=20)
    if key == "gp":
        try:
            import torch  # noqa: F401  - Optuna's GP sampler runs on torch
        except ModuleNotFoundError:
            raise InvalidRequestError("sampler 'gp' needs torch (Optuna's GPSampler); install the exec extra "
                                      "(pip install \".[exec]\" from a checkout) or choose nsga2/tpe/random.") from None
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=20)
    return optuna.samplers.RandomSampler(seed=seed)


def _positive(name: str, value: Any, limit: float) -> Any:
    import math

    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or math.isinf(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}.")
    if value <= 0 or value > limit:
        raise InvalidRequestError(f"{name} must be between 1 and {limit:,}, got {value}.")
    return value


def run_search(model: Any, constraints: Any = None, *, space: SearchSpace | None = None, n_trials: int = 200,
               sampler: str = "auto", objectives: Iterable[str] | str | None = None,
               storage: str | Path | None = None, study_name: str | None = None, seed: int | None = None,
               n_jobs: int = 1, timeout: float | None = None, profile: Any = None, calibration: Any = None,
               progress: bool = False, metric: str | None = None, model_dir: str | Path | None = None,
               execute_top: int = 0, rounds: int = 1, workers: int = 1, evaluator: str | None = None,
               eval_data: str | Path | None = None, out_dir: str | Path | None = None,
               calibration_dir: str | Path | None = None, device: str = "auto",
               baseline_run: str | Path | None = None, execution_timeout: float | None = None) -> SearchResult:
    """Search strategies for ``model`` under ``constraints``; returns the ranked trade-offs.

    ``storage``: None = in memory (Python) — the CLI defaults to ``sqlite:///fitplan.db``; a path or any
    SQLAlchemy URL (``postgresql://...`` for several machines). ``study_name``: None derives one from
    the request, so the same call resumes the same study. ``n_trials``: the study's total budget.
    ``objectives``: None = ``search.objective.default_objectives`` (what the target can give). ``metric``:
    the evaluator or metric family quality is predicted on ('fidelity', 'perplexity'; default accuracy).

    Closed loop (``execute_top=K > 0``, see :mod:`search.loop`): ``rounds`` rounds of predicted trials,
    K candidates executed for real on ``model_dir`` (default: ``model`` when it is a directory) with the
    executors' ``evaluator`` (name; default perplexity for causal LMs, fidelity for encoders; ``metric``
    defaults to it) on ``eval_data`` (a file; default the evaluator's built-in data), ``workers`` at once
    on ``device``, runs under ``out_dir/runs``; measurements refine the calibration store
    ``calibration_dir`` (default ``out_dir/calibration``; a ``calibration`` store's own directory when one
    is given) and every strategy is re-scored before the next round. The default space is what the
    executors run on ``device`` (``search.space.executable_space``). The study needs a database execution
    workers share: ``storage`` None means ``sqlite:///<out_dir>/search.db`` here. Needs the exec extra.
    ``baseline_run``: the result.json (or run directory) of the uncompressed model already measured with the
    same evaluator (``fitplan lab`` measures it first): stored in the study as the reference, so the loop
    never executes the uncompressed model itself. The uncompressed model is never selected as a candidate
    to execute, and is recommended only when no compressed candidate is feasible (search.results).
    ``execution_timeout``: seconds one execution may take before its isolated process is killed and the
    candidate is stored as failed ("timed out after N s"; never retried); None derives it from the run's
    expected cost (``search.loop.execution_timeout``: 10x the study's median run, or the profile's cost).
    """
    import optuna

    from planner.models.resolve import get_model
    from search.candidates import candidate_evaluator, coerce_constraints, request_record
    from search.space import default_space
    from search.storage import open_storage
    from search.study import default_study_name, open_study, record_model_source

    n_trials = int(_positive("n_trials", n_trials, MAX_TRIALS))
    n_jobs = int(_positive("n_jobs", n_jobs, 64))
    _positive("timeout", timeout, 10**7)
    loop = None
    if execute_top:
        from search.loop import LoopRequest

        loop = LoopRequest.build(model=model, model_dir=model_dir, execute_top=execute_top, rounds=rounds,
                                 workers=workers, evaluator=evaluator, eval_data=eval_data, device=device,
                                 out_dir=out_dir, calibration_dir=calibration_dir, calibration=calibration,
                                 baseline_run=baseline_run, timeout_s=execution_timeout)
        calibration = loop.open_store()
    elif rounds != 1 or any(v is not None for v in (model_dir, evaluator, eval_data, out_dir, calibration_dir,
                                                    baseline_run, execution_timeout)):
        given = [name for name, v in (("rounds", rounds != 1 or None), ("model_dir", model_dir),
                                      ("evaluator", evaluator), ("eval_data", eval_data), ("out_dir", out_dir),
                                      ("calibration_dir", calibration_dir), ("baseline_run", baseline_run),
                                      ("execution_timeout", execution_timeout)) if v is not None]
        raise InvalidRequestError(f"{', '.join(given)} only apply to a closed loop: set execute_top to the number of "
                                  f"candidates to execute for real per round (e.g. execute_top=4).")
    spec = get_model(model)
    constraints = coerce_constraints(constraints)
    if objectives is None:  # search.objective.default_objectives: what the target can give
        objectives = default_objectives(constraints)
    objective_list = resolve_objectives(objectives if not isinstance(objectives, str) else objectives)
    profile = _load_profile(profile)
    if loop is not None and metric is None:
        metric = loop.evaluator  # quality predicted on the scale the executors measure
    if space is None:
        if loop is not None:
            from search.space import executable_space

            space = executable_space(spec, constraints, loop.device)
        else:
            space = default_space(spec, constraints)
        if profile is not None:
            space = space.model_copy(update={"bit_budgets": DEFAULT_BIT_BUDGETS})
    allocator = None
    if profile is not None and space.bit_budgets:
        from search.allocator import BlockAllocator

        allocator = BlockAllocator(spec, profile, tuple(f for f in space.weight_formats if f != "none"))
        # Budgets below what the measured formats can reach have no allocation: leave them out of the
        # space rather than fail their trials.
        reachable = tuple(b for b in space.bit_budgets if b >= allocator.min_bits() - 1e-9)
        space = space.model_copy(update={"bit_budgets": reachable})

    def make_scorer(store: Any) -> TrialScorer:
        return TrialScorer(candidate_evaluator(spec, constraints, objective_list, profile=profile, calibration=store,
                                               metric=metric, device=device), objective_list)

    scorer = make_scorer(calibration)
    request = request_record(spec, constraints, space, objective_list)
    if metric is not None:
        request["metric"] = metric
    if profile is not None:
        request["profile"] = {"fingerprint": profile.model.fingerprint, "created": profile.created,
                              "evaluator": profile.evaluator.name}
    directions = [o.direction for o in objective_list]
    sampler_obj = make_sampler(sampler, seed=seed, n_objectives=len(objective_list), n_trials=n_trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is None and loop is not None:  # execution workers share the study: it needs a database
        storage = f"sqlite:///{Path(loop.out_dir) / 'search.db'}"
        Path(loop.out_dir).mkdir(parents=True, exist_ok=True)
    store = open_storage(storage) if storage is not None else optuna.storages.InMemoryStorage()
    name = study_name or default_study_name(request)
    study, resumed = open_study(store, name, request, directions, sampler_obj)
    record_model_source(study, spec)  # a local model: fitplan report rebuilds it offline (search.study)

    def suggest(trial: optuna.trial.Trial):
        return space.suggest(trial, allocator)

    def objective(trial: optuna.trial.Trial) -> list[float]:
        return scorer(trial, suggest(trial))

    def optimize(target_study, function, target: int, callback=None) -> bool:  # noqa: ANN001
        """Grow ``target_study`` to ``target`` finished trials; False when interrupted (Ctrl-C)."""
        done = _finished(target_study)
        remaining = max(0, target - done)
        callbacks = [optuna.study.MaxTrialsCallback(target, states=(optuna.trial.TrialState.COMPLETE,
                                                                    optuna.trial.TrialState.FAIL))]
        if callback is not None:
            callbacks.insert(0, callback)
        bar = _Progress(scorer, target, done) if progress and remaining else None
        if bar is not None:
            callbacks.append(bar.update)
        try:
            if remaining:
                if bar is not None:
                    bar.start()
                target_study.optimize(function, n_trials=remaining, timeout=timeout, n_jobs=n_jobs,
                                      callbacks=callbacks, catch=(FitplanError, ValueError, ArithmeticError),
                                      gc_after_trial=False, show_progress_bar=False)
        except KeyboardInterrupt:
            return False
        finally:
            if bar is not None:
                bar.stop()
        return True

    if loop is None:
        finished = optimize(study, objective, n_trials)
        return result_from_study(study, interrupted=not finished, resumed=resumed, evaluations=scorer.evaluations)

    from search.loop import Loop

    base = "profile" if profile is not None else "priors"
    runner = Loop(study=study, storage=store, spec=spec, constraints=constraints, space=space, objectives=objective_list,
                  request=loop, make_scorer=make_scorer, suggest=suggest, n_trials=n_trials, sampler_name=sampler,
                  seed=seed, make_sampler=make_sampler, progress=progress, base_label=base,
                  profile_seconds=_profile_run_seconds(profile))
    try:
        runner.run(optimize)
    except KeyboardInterrupt:  # during an execution: every finished measurement is in the study
        runner.interrupted = True
    return result_from_study(study, interrupted=runner.interrupted, resumed=resumed, evaluations=scorer.evaluations)


def _profile_run_seconds(profile: Any) -> float | None:
    """Expected seconds of one plain execution from a profile's own cost: loading the model plus two
    evaluator passes (the baseline's and the candidate's; ProfileCost.reference_seconds is one). None
    without a profile or its cost."""
    cost = getattr(profile, "cost", None)
    if cost is None or not cost.reference_seconds:
        return None
    return cost.load_seconds + 2.0 * cost.reference_seconds


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=states))


class _Progress:
    """A rich progress bar on stderr with the best feasible candidates so far."""

    def __init__(self, scorer: TrialScorer, total: int, done: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.scorer = scorer
        self.progress = Progress(TextColumn("search"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.description}"), console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("", total=total, completed=done)
        self.best: dict[str, tuple[float, str]] = {}

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, study, trial) -> None:
        import optuna

        record = trial_record(trial)
        if trial.state == optuna.trial.TrialState.COMPLETE and record and not record["violations"]:
            first = self.scorer.objectives[0]
            value = trial.values[0]
            current = self.best.get(first.name)
            better = current is None or (value < current[0] if first.direction == "minimize" else value > current[0])
            if better:
                self.best[first.name] = (value, record["summary"])
        text = "; ".join(f"best {name} {value:.3g}: {summary}" for name, (value, summary) in self.best.items())
        self.progress.update(self.task, advance=1, description=text[:70] or "no feasible candidate yet")
