"""Speed of `planner.plan`: a full plan of a 7B model over the default strategy grid.

Target (issue 9): < 1 s for the seed lab's constraints ({'max_memory_gb': 16, 'max_accuracy_loss': 5,
'min_speedup': 1.5, 'deployment_target': 'cloud_inference'}) on a 7B model, default grid. Reported:

- startup: importing planner and pandas, loading the model (not part of a plan);
- first plan in the process (also loads the accuracy priors, engine and format data on first use);
- the plan itself, median of --repeat runs with the estimator's plan caches cleared before each run
  (nothing carried over from the previous run but the data files already parsed);
- the same plan with every candidate run through the estimator (``Plan.table('all')``): a plan only
  sends the candidates within max_accuracy_loss (plus what its misses and relaxations need) through it;
- a second setting: RTX 4090, transformers, no accuracy limit (every candidate evaluated).

Timings are wall time with the process's CPU time in brackets: the machine is shared, CPU time is
the steadier figure.

    python benchmarks/plan_speed.py [--repeat N] [--model NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED = {"max_memory_gb": 16, "max_accuracy_loss": 5, "min_speedup": 1.5, "deployment_target": "cloud_inference"}
WIDE = {"gpu": "RTX 4090", "engine": "hf", "max_memory_gb": 16}


def _clear_estimator_caches() -> None:
    from planner.memory import inference

    inference._PLAN_CACHE.clear()
    inference._SHARED_CACHE.clear()


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _median(fn, repeat: int):
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        _clear_estimator_caches()
        result, wall, cpu = _timed(fn)
        walls.append(wall)
        cpus.append(cpu)
    return result, statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="mistralai/Mistral-7B-v0.1")
    args = parser.parse_args(argv)

    def start():
        import pandas  # noqa: F401

        import planner
        return planner.get_model(args.model)

    spec, wall, cpu = _timed(start)
    print(f"startup (imports, model {spec.name}, {spec.params.total / 1e9:.2f} B params): "
          f"{wall * 1000:.0f} ms [{cpu * 1000:.0f} ms CPU]")
    from planner.planning import plan

    result, wall, cpu = _timed(lambda: plan(spec, SEED))
    print(f"first plan in the process: {wall * 1000:.0f} ms [{cpu * 1000:.0f} ms CPU]")

    result, wall, cpu = _median(lambda: plan(spec, SEED), args.repeat)
    target = "met" if wall < 1.0 else "MISSED"
    print(f"seed-lab plan ({result.n_candidates} candidates, {result.n_feasible} feasible): median "
          f"{wall * 1000:.0f} ms [{cpu * 1000:.0f} ms CPU] over {args.repeat} runs; target < 1000 ms: {target}")
    print(f"  recommended: {result.recommended.summary if result.recommended else None}; {result.reason}")

    def everything():
        p = plan(spec, SEED)
        p.table("all")
        return p

    result, wall, cpu = _median(everything, args.repeat)
    print(f"seed-lab plan, every candidate through the estimator ({result.n_candidates}): median "
          f"{wall * 1000:.0f} ms [{cpu * 1000:.0f} ms CPU]")

    result, wall, cpu = _median(lambda: plan(spec, WIDE), args.repeat)
    print(f"RTX 4090 / hf / 16 GiB, no accuracy limit ({result.n_candidates} candidates, all evaluated): median "
          f"{wall * 1000:.0f} ms [{cpu * 1000:.0f} ms CPU]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
