"""How well the search finds the Pareto front, and what a trial costs per storage.

1. Exhaustive truth: every point of a space small enough to enumerate (>= 5,000 configurations) is
   scored with the planner; the feasible Pareto front of the predicted objectives is the reference.
2. Samplers (NSGA-II, TPE, GP if torch is installed, random) at equal budgets and several seeds: the
   hypervolume of the feasible points each search found, as a share of the exhaustive front's
   hypervolume (objectives min-max normalised over the feasible set, reference point 1.1 in each), and
   the trials needed to reach 0.95.
3. Seconds per trial for in-memory, SQLite and (where a server can be started) PostgreSQL storage, and
   the time of 1,000 predicted trials on SQLite.

Usage: python benchmarks/search_efficiency.py [--budgets 100,200,500] [--seeds 5] [--samplers ...]
Target: hypervolume ratio >= 0.95 within 10% of the space, clearly above random at the same budget.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "meta-llama/Llama-3.1-8B"


def _space():
    from search.space import SearchSpace

    return SearchSpace(weight_formats=("none", "fp8", "int8", "gptq-int8", "nf4", "gptq-int4", "awq-int4"),
                       kv_dtypes=("auto", "int8", "int4"), keep_layers=(0, 1, 2),
                       sparsity=("none", "unstructured", "2:4", "heads", "ffn", "layers"),
                       sparsity_levels=(0.125, 0.25, 0.5), distill_depths=(1.0, 0.75, 0.5),
                       distill_widths=(1.0, 0.75, 0.5))


def _constraints():
    from planner.planning.constraints import Constraints

    return Constraints(max_memory_gb=16, max_accuracy_loss=10, gpu="RTX 4090")


OBJECTIVES = ("quality_loss", "memory_gib", "cost_per_1m_tokens")


def exhaustive(space, evaluate, objectives):
    """(all objective vectors of feasible points, seconds)."""
    start = time.perf_counter()
    feasible = []
    for point in space.points():
        row = evaluate(space.strategy(**point))
        values = [o.value(row) for o in objectives]
        if row["feasible"] and all(v is not None for v in values):
            feasible.append([v if o.direction == "minimize" else -v for o, v in zip(objectives, values)])
    return np.array(feasible), time.perf_counter() - start


def hypervolume(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    from optuna._hypervolume import compute_hypervolume

    if len(points) == 0:
        return 0.0
    scaled = (points - low) / np.where(high > low, high - low, 1.0)
    return float(compute_hypervolume(scaled, np.full(points.shape[1], 1.1)))


def run_sampler(sampler: str, budget: int, seed: int, space, constraints, low, high, truth_hv):
    """(hypervolume ratio at the budget, first trial count reaching 0.95 or None)."""
    import optuna

    from search.run import run_search

    result = run_search(MODEL, constraints, space=space, n_trials=budget, sampler=sampler, seed=seed,
                        objectives=OBJECTIVES)
    trials = result.trials.sort_values("number")
    found, reached = [], None
    columns = [f"objective_{name}" for name in OBJECTIVES]
    checkpoints = set(range(10, budget + 1, 10)) | {budget}
    for count, (_, trial) in enumerate(trials.iterrows(), start=1):
        if trial["state"] == "COMPLETE" and trial.get("feasible"):
            found.append([trial[c] for c in columns])
        if reached is None and count in checkpoints:
            if hypervolume(np.array(found), low, high) / truth_hv >= 0.95:
                reached = count
    del optuna
    return hypervolume(np.array(found), low, high) / truth_hv, reached


def storage_timing(trials: int) -> dict[str, float]:
    from search.run import run_search

    space, constraints = _space(), _constraints()
    out = {}
    start = time.perf_counter()
    run_search(MODEL, constraints, space=space, n_trials=trials, sampler="random", seed=0)
    out["in-memory"] = (time.perf_counter() - start) / trials
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_search(MODEL, constraints, space=space, n_trials=trials, sampler="random", seed=0,
                   storage=f"sqlite:///{tmp}/bench.db")
        out["sqlite"] = (time.perf_counter() - start) / trials
        try:
            sys.path.insert(0, str(ROOT / "tests"))
            from services import start_postgres

            url, stop = start_postgres(Path(tmp) / "pg")
        except Exception as error:  # noqa: BLE001 - report and go on
            print(f"PostgreSQL timing skipped: {error}")
        else:
            try:
                start = time.perf_counter()
                run_search(MODEL, constraints, space=space, n_trials=trials, sampler="random", seed=0, storage=url)
                out["postgresql"] = (time.perf_counter() - start) / trials
            finally:
                stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", default="100,200,500")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--samplers", default="nsga2,tpe,gp,random")
    parser.add_argument("--storage-trials", type=int, default=200)
    parser.add_argument("--sqlite-1000", action="store_true", help="also time 1,000 trials on SQLite")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    from planner.models import get_model
    from search.candidates import candidate_evaluator
    from search.objective import resolve_objectives

    space, constraints = _space(), _constraints()
    objectives = resolve_objectives(OBJECTIVES)
    evaluate = candidate_evaluator(get_model(MODEL), constraints, objectives)
    truth, seconds = exhaustive(space, evaluate, objectives)
    low, high = truth.min(axis=0), truth.max(axis=0)
    truth_hv = hypervolume(truth, low, high)
    print(f"space: {space.size:,} configurations, {len(truth):,} feasible; exhaustive scoring {seconds:.1f} s "
          f"({seconds / space.size * 1e3:.2f} ms each); objectives {', '.join(OBJECTIVES)}")
    budgets = [int(b) for b in args.budgets.split(",")]
    samplers = [s for s in args.samplers.split(",") if s]
    print(f"\nhypervolume ratio to the exhaustive front (median over {args.seeds} seeds; min..max), trials to 0.95")
    print(f"{'sampler':8} " + " ".join(f"{'@' + str(b):>18}" for b in budgets) + f" {'to 0.95 (median)':>18}")
    summary = {}
    for sampler in samplers:
        if sampler == "gp":
            try:
                import torch  # noqa: F401
            except ModuleNotFoundError:
                print("gp       skipped (needs torch)")
                continue
        cells, reach_all = [], []
        for budget in budgets:
            ratios = []
            for seed in range(args.seeds):
                ratio, reached = run_sampler(sampler, budget, seed, space, constraints, low, high, truth_hv)
                ratios.append(ratio)
                if budget == budgets[-1]:
                    reach_all.append(reached)
            summary[(sampler, budget)] = statistics.median(ratios)
            cells.append(f"{statistics.median(ratios):.3f} ({min(ratios):.2f}..{max(ratios):.2f})")
        reached = [r for r in reach_all if r is not None]
        reach = (f"{statistics.median(reached):.0f} ({len(reached)}/{len(reach_all)} seeds)" if reached
                 else f"not within {budgets[-1]}")
        print(f"{sampler:8} " + " ".join(f"{c:>18}" for c in cells) + f" {reach:>18}")
    tenth = space.size // 10
    print(f"\n10% of the space = {tenth} trials")
    timing = storage_timing(args.storage_trials)
    print("\nseconds per trial: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in timing.items()))
    if args.sqlite_1000:
        from search.run import run_search

        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            run_search(MODEL, constraints, space=space, n_trials=1000, sampler="auto", seed=0,
                       storage=f"sqlite:///{tmp}/bench.db")
            print(f"1,000 predicted trials on SQLite (sampler auto): {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
