"""Measure the closed loop (issue 11): predictor error on held-out candidates, evaluations to a verified
recommendation, wall time.

Per model — MiniLM (all-MiniLM-L6-v2, evaluator fidelity) and the tiny causal LM (the executors' fixture,
evaluator perplexity) — with fixed seeds, on this machine (deployment target ``local``):

1. **Profile**: ``executors.profile(model)`` (cached on disk by model and settings; the time printed says
   whether it was measured now or read from the cache).
2. **Loop**: ``run_search(model, local constraints, profile=..., execute_top=K, rounds=R)`` in a fresh
   output directory, on the executable space (``search.space.executable_space``) without distilled
   students unless ``--students``: a student is trained for each candidate (minutes per candidate on this
   CPU, e.g. 209 s for one MiniLM student under load, against ~13 s for a quantized one). Reported: the round reports (the predictor of round r scored on what rounds >= r
   measured), the real evaluations until the top-ranked candidate is verified (measured, every constraint
   met), and whether the verified recommendation's measured quality lies inside the 80% interval
   predicted for it before it was measured.
3. **Held-out set**: H candidates the search proposed and the loop did not measure, drawn at random
   (seeded) among those within the memory budget (under the priors, with the selection's error band),
   whatever their predicted quality, so the set spans the quality range the ranking must order;
   executed for real. None of them is used to fit anything.
4. **Predictors on the held-out set**: priors only (no profile, no calibration); the profile alone; the
   profile + the calibration records of round 1; the profile + rounds 1 and 2. Quality-loss MAE
   (points), Spearman of predicted vs measured loss, 80%-interval coverage, and the median |error| of
   memory and latency.

Targets (issue 11): quality-loss MAE at least halved by profile + calibration vs priors; Spearman >= 0.8 on
held-out candidates; a verified recommendation within 12 real evaluations; the recommendation's measured
quality inside its predicted interval. The script prints each as met / missed.

Usage: python benchmarks/closed_loop.py [--models minilm,tiny] [--k 4] [--rounds 3] [--held-out 8]
[--trials 60] [--seed 0] [--out DIR]. Set OMP_NUM_THREADS=1 on a shared machine (timings are then noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The lab's constraints (issue 11: "fitplan lab <MiniLM dir> --max-memory-gb 1 --max-accuracy-loss 3").
MODELS = {
    "minilm": {"evaluator": "fidelity", "constraints": {"max_memory_gb": 1.0, "max_accuracy_loss": 3.0}},
    "tiny": {"evaluator": "perplexity", "constraints": {"max_memory_gb": 1.0, "max_accuracy_loss": 3.0}},
}
MAX_EVALUATIONS = 12


def model_dir(name: str) -> Path:
    import executors

    if name == "minilm":
        return executors.minilm_dir()
    return Path(executors.ensure_tiny_llm(progress=True).path)


def _storage(work: Path) -> str:
    """The loop's study (run_search's default for a closed loop without a storage)."""
    return f"sqlite:///{work / 'search.db'}"


def _constraints(name: str):
    from planner.planning.constraints import Constraints

    return Constraints(deployment_target="local", **MODELS[name]["constraints"])


def _agreement(predicted, measured, low=None, high=None):
    from planner.accuracy.agreement import predictor_agreement

    return predictor_agreement(predicted, measured, low=low, high=high)


def score(predictions: list, measurements: list) -> dict:
    """Quality-loss MAE / Spearman / coverage, memory and latency median |error| % of one predictor."""
    ok = [(p, m) for p, m in zip(predictions, measurements)
          if m.status == "ok" and m.quality_retained_pct is not None]
    quality = _agreement([100 - p.quality_retained_pct for p, _ in ok], [100 - m.quality_retained_pct for _, m in ok],
                         low=[100 - p.quality_high_pct for p, _ in ok], high=[100 - p.quality_low_pct for p, _ in ok])
    memory = _agreement([100 * (p.memory_gib / m.memory_gib - 1) if p.memory_gib and m.memory_gib else None
                         for p, m in ok], [0.0] * len(ok))
    latency = _agreement([100 * (p.latency_ms / m.latency_ms - 1) if p.latency_ms and m.latency_ms else None
                          for p, m in ok], [0.0] * len(ok))
    return {"n": quality.n, "mae": quality.mae, "spearman": quality.spearman, "coverage": quality.coverage,
            "memory_pct": memory.median_abs_error, "latency_pct": latency.median_abs_error}


def run_model(name: str, args: argparse.Namespace, out: Path) -> dict:
    import executors
    from planner.models import get_model
    from planner.strategy import CompressionStrategy
    from search.candidates import candidate_evaluator
    from search.loop import LoopRequest, Predictors, execute, figures, plausibly_feasible
    from search.measured import MeasuredCandidate
    from search.objective import TrialScorer, default_objectives, strategy_key
    from search.run import run_search

    directory = model_dir(name)
    evaluator = MODELS[name]["evaluator"]
    constraints = _constraints(name)
    spec = get_model(directory)
    work = out / name
    timings = {}

    start = time.monotonic()
    outcome = executors.run_profile(directory, evaluator=evaluator, progress=False)
    timings["profile"] = time.monotonic() - start
    profile = outcome.profile
    profile_note = "read from the cache" if outcome.cached else "measured now"

    from search.run import DEFAULT_BIT_BUDGETS
    from search.space import executable_space

    space = executable_space(spec, constraints).model_copy(update={"bit_budgets": DEFAULT_BIT_BUDGETS})
    if not args.students:
        space = space.model_copy(update={"distill_depths": (1.0,), "distill_widths": (1.0,)})
    start = time.monotonic()
    result = run_search(directory, constraints, space=space, profile=profile, n_trials=args.trials, seed=args.seed,
                        execute_top=args.k, rounds=args.rounds, evaluator=evaluator, out_dir=work,
                        study_name=f"closed-loop-{name}", progress=True)
    timings["loop"] = time.monotonic() - start
    reports = result.rounds
    verified_at = next((r.evaluations for r in reports if r.recommendation_verified), None)

    from search.measured import MEASURED_PREFIX, study_items
    from search.storage import open_storage
    import optuna

    study = optuna.load_study(study_name=f"closed-loop-{name}", storage=open_storage(_storage(work)))
    measured = study_items(study.user_attrs, MEASURED_PREFIX, MeasuredCandidate)
    best = result.best
    inside = None
    if best is not None and best.get("verified"):
        key = strategy_key(CompressionStrategy.model_validate_json(best["strategy_json"]))
        from search.measured import digest

        done = measured[digest(key)]
        before = done.predicted[done.round]
        inside = before.quality_low_pct <= done.quality_retained_pct <= before.quality_high_pct

    # Predictors: priors only; profile; profile + round-1 records; profile + rounds 1-2.
    objectives = tuple(result.objectives) or default_objectives(constraints)
    from search.objective import resolve_objectives

    objective_list = resolve_objectives(objectives)

    def scorer(with_profile: bool):
        def make(store):
            return TrialScorer(candidate_evaluator(spec, constraints, objective_list,
                                                   profile=profile if with_profile else None, calibration=store,
                                                   metric=evaluator), objective_list)
        return make

    request = LoopRequest.model_validate(study.user_attrs["fitplan_loop"])
    store = request.open_store()
    priors = Predictors(scorer(False), store, study.study_name, spec.model_type)
    profiled = Predictors(scorer(True), store, study.study_name, spec.model_type)
    states = {"priors only": (priors, 1), "profile": (profiled, 1), "profile + 1 round": (profiled, 2),
              "profile + 2 rounds": (profiled, 3)}

    # Held-out set: plausibly feasible under the priors, proposed by the search, never measured by the loop.
    measured_keys = {m.key for m in measured.values()}
    memory_limit = {"max_memory_gb": constraints.active_limits()["max_memory_gb"]}
    pool = []
    for row in result.table.to_dict(orient="records"):
        strategy = CompressionStrategy.model_validate_json(row["strategy_json"])
        key = strategy_key(strategy)
        if key in measured_keys or strategy.is_identity:
            continue
        prior = figures(priors.scorer(1).row(strategy))
        if plausibly_feasible({"memory_gib": prior.memory_gib}, memory_limit):
            pool.append((key, row["strategy"], strategy))
    rng = random.Random(args.seed)
    held = rng.sample(pool, min(args.held_out, len(pool)))
    start = time.monotonic()
    jobs = [{"key": key, "strategy_json": key, "round": 0, "trial": None} for key, _, _ in held]
    runs = execute(_storage(work), f"closed-loop-{name}-heldout", jobs, request, progress=True)
    timings["held-out"] = time.monotonic() - start
    by_key = {m.key: m for m in runs}
    held_measured = [by_key[key] for key, _, _ in held]
    table = {}
    for label, (predictors, state) in states.items():
        predictions = [figures(predictors.scorer(state).row(strategy)) for _, _, strategy in held]
        table[label] = score(predictions, held_measured)
    return {"name": name, "dir": str(directory), "evaluator": evaluator, "constraints": MODELS[name]["constraints"],
            "profile_note": profile_note, "timings": timings, "reports": [r.model_dump() for r in reports],
            "verified_at": verified_at, "evaluations": reports[-1].evaluations if reports else 0,
            "recommendation": (best or {}).get("strategy"), "verified": bool(best and best.get("verified")),
            "inside": inside, "held_out": [(summary, m.status, m.quality_retained_pct) for (_, summary, _), m in
                                           zip(held, held_measured)], "predictors": table}


def _fmt(value, spec="{:.2f}") -> str:
    return "-" if value is None else spec.format(value)


def report(outcome: dict) -> list[tuple[str, bool | None, str]]:
    name = outcome["name"]
    print(f"\n== {name}: {outcome['dir']} (evaluator {outcome['evaluator']}, constraints {outcome['constraints']}, "
          "target local)")
    t = outcome["timings"]
    print(f"wall time: profile {t['profile']:.0f} s ({outcome['profile_note']}), loop {t['loop']:.0f} s, held-out "
          f"executions {t['held-out']:.0f} s")
    print("round reports (the predictor of round r scored on what rounds >= r measured):")
    print(f"  {'round':>5} {'predictor':<40} {'held':>4} {'MAE':>6} {'rho':>5} {'cover':>5} {'mem%':>5} {'lat%':>5} "
          f"{'runs':>4} {'evals':>5}  recommendation")
    for r in outcome["reports"]:
        print(f"  {r['round']:>5} {r['predictor'][:40]:<40} {r['held_out']:>4} {_fmt(r['quality_loss_mae']):>6} "
              f"{_fmt(r['quality_spearman']):>5} {_fmt(r['quality_coverage'], '{:.0%}'):>5} "
              f"{_fmt(r['memory_error_pct'], '{:.1f}'):>5} {_fmt(r['latency_error_pct'], '{:.1f}'):>5} "
              f"{r['executed']:>4} {r['evaluations']:>5}  {r['recommendation']} "
              f"({'verified' if r['recommendation_verified'] else 'not verified'})")
    print(f"held-out candidates ({len(outcome['held_out'])}, never used to fit):")
    for summary, status, quality in outcome["held_out"]:
        print(f"  {summary}: {status}{'' if quality is None else f', {quality:.2f}% retained'}")
    print(f"  {'predictor':<20} {'n':>3} {'MAE':>6} {'rho':>5} {'cover':>5} {'mem%':>5} {'lat%':>5}")
    for label, s in outcome["predictors"].items():
        print(f"  {label:<20} {s['n']:>3} {_fmt(s['mae']):>6} {_fmt(s['spearman']):>5} "
              f"{_fmt(s['coverage'], '{:.0%}'):>5} {_fmt(s['memory_pct'], '{:.1f}'):>5} "
              f"{_fmt(s['latency_pct'], '{:.1f}'):>5}")
    priors, final = outcome["predictors"]["priors only"], outcome["predictors"]["profile + 2 rounds"]
    checks = []
    if priors["mae"] is not None and final["mae"] is not None:
        checks.append((f"{name}: quality-loss MAE halved (priors {priors['mae']:.2f} -> profile + 2 rounds "
                       f"{final['mae']:.2f} points)", final["mae"] <= 0.5 * priors["mae"], ""))
    else:
        checks.append((f"{name}: quality-loss MAE halved", None, "no held-out measurement"))
    checks.append((f"{name}: Spearman >= 0.8 on held-out candidates (profile + 2 rounds: "
                   f"{_fmt(final['spearman'])})", None if final["spearman"] is None else final["spearman"] >= 0.8, ""))
    at = outcome["verified_at"]
    checks.append((f"{name}: verified recommendation within {MAX_EVALUATIONS} real evaluations "
                   f"({'at ' + str(at) if at else 'not verified after ' + str(outcome['evaluations'])})",
                   at is not None and at <= MAX_EVALUATIONS, ""))
    checks.append((f"{name}: recommendation's measured quality inside its predicted interval "
                   f"({outcome['recommendation']})", outcome["inside"], ""))
    return checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,tiny")
    parser.add_argument("--k", type=int, default=4, help="candidates executed per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--trials", type=int, default=60, help="predicted trials of the whole loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="work directory (default: a new temporary one)")
    parser.add_argument("--students", action="store_true", help="also search distilled students (slow: each "
                        "candidate trains one)")
    args = parser.parse_args()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="fitplan-closed-loop-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {out}")
    started = time.monotonic()
    checks = []
    outcomes = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        outcome = run_model(name, args, out)
        outcomes.append(outcome)
        checks += report(outcome)
    (out / "closed_loop.json").write_text(json.dumps(outcomes, indent=2, default=str))
    print(f"\ntotal wall time {time.monotonic() - started:.0f} s (shared machine: timings are noisy)")
    print("targets:")
    for text, ok, why in checks:
        verdict = "n/a" if ok is None else "met" if ok else "MISSED"
        print(f"  [{verdict}] {text}{' - ' + why if why else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
