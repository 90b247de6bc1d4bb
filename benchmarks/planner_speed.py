"""Speed of the planner: one estimate, the whole-catalog what_fits sweep, and `fitplan fits` end to end.

Targets (issue 3): a single estimate < 1 ms; what_fits over every catalog GPU x every registry model x 8
precisions < 200 ms; `fitplan fits --gpu 16GB` well under a second. Startup (imports, the catalog and
registry files) is reported separately from the computations. Timings are medians of wall time and, in
brackets, CPU time of this process (or of the CLI child): on a shared VM the CPU time is the steadier one.

    python benchmarks/planner_speed.py [--repeat N]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _clear_caches() -> None:
    from planner.memory import inference
    from planner.sizing import table

    inference._PLAN_CACHE.clear()
    inference._SHARED_CACHE.clear()
    table._cached_table.cache_clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    import hardware_db
    import planner
    from planner import estimate_memory
    from planner.sizing import DEFAULT_PRECISIONS, what_fits

    specs = planner.list_models()
    gpus = [a.name for a in hardware_db.list()]
    startup = time.perf_counter() - start
    print(f"startup (imports, {len(gpus)} catalog GPUs, {len(specs)} registry models): {startup * 1000:.0f} ms")

    precisions = DEFAULT_PRECISIONS["hf"]
    combos = [(s, p) for s in specs for p in ("bf16", "nf4", "awq-int4") if s.architecture != "encoder"][:120]
    def timed(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def show(samples: list[tuple[float, float]], scale: float = 1e3, unit: str = "ms", digits: int = 0) -> str:
        wall = statistics.median(s[0] for s in samples) * scale
        cpu = statistics.median(s[1] for s in samples) * scale
        return f"{wall:.{digits}f} {unit} [cpu {cpu:.{digits}f} {unit}]"

    def all_estimates() -> None:
        for spec, precision in combos:
            estimate_memory(spec, precision, prompt_len=2048, new_tokens=512)

    cold, warm = [], []
    for _ in range(args.repeat):
        _clear_caches()
        cold.append(tuple(x / len(combos) for x in timed(all_estimates)))
        warm.append(tuple(x / len(combos) for x in timed(all_estimates)))
    print(f"single estimate_memory (MemoryEstimate with every term), median over {len(combos)} (model, precision): "
          f"first call {show(cold, digits=3)}, repeated {show(warm, digits=3)} (target < 1 ms)")

    sweeps_cold, sweeps_warm = [], []
    frames = []
    for _ in range(args.repeat):
        _clear_caches()
        sweeps_cold.append(timed(lambda: frames.append(what_fits(gpus, precisions=precisions, context=4096))))
        sweeps_warm.append(timed(lambda: what_fits(gpus, precisions=precisions, context=8192)))
    print(f"what_fits({len(gpus)} GPUs x {len(specs)} models x {len(precisions)} precisions = {len(frames[-1]):,} "
          f"rows): cold {show(sweeps_cold)}, another context {show(sweeps_warm)} (target < 200 ms)")

    walls = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "planner.cli", "fits", "--gpu", "16GB"], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        walls.append((time.perf_counter() - t, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
    print(f"`python -m planner.cli fits --gpu 16GB` end to end: {show(walls, scale=1, unit='s', digits=2)} "
          f"(target well under 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
