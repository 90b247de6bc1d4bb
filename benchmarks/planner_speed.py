"""Speed of the planner: one estimate, the whole-catalog what_fits sweep, and `fitplan fits` end to end.

Targets: a single estimate < 1 ms (issue 3); what_fits over every catalog GPU x every registry model x 8
precisions < 300 ms and `fitplan fits --gpu 16GB` < 0.5 s (issue 13, with the 256-model registry; the
console script's modules byte-compiled, as installed; `python -m planner.cli` from a checkout may compile
them on every run when PYTHONDONTWRITEBYTECODE is set). The GPU-independent table behind both is kept on
disk (planner.sizing.table_cache): each sweep is timed computed from scratch and read back from that
cache (a private temporary one). Startup (imports, the catalog and registry files) is reported
separately from the computations. Timings are medians of wall time and, in brackets, CPU time of this
process (or of the CLI child): on a shared VM the CPU time is the steadier one.

    python benchmarks/planner_speed.py [--repeat N] [--script PATH/TO/fitplan]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _clear_caches() -> None:
    from planner.memory import inference
    from planner.sizing import fits, table

    inference._PLAN_CACHE.clear()
    inference._SHARED_CACHE.clear()
    table._cached_table.cache_clear()
    fits._fits_table.cache_clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--script", metavar="PATH", help="the installed `fitplan` console script to time "
                                                         "(default: next to this interpreter, else on PATH)")
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

    cache = tempfile.TemporaryDirectory(prefix="fitplan-bench-cache-")
    os.environ["FITPLAN_CACHE"] = cache.name
    sweeps = {"computed": [], "disk": [], "context": []}
    frames = []
    for _ in range(args.repeat):
        os.environ["FITPLAN_TABLE_CACHE"] = "off"
        _clear_caches()
        sweeps["computed"].append(timed(lambda: frames.append(what_fits(gpus, precisions=precisions, context=4096))))
        sweeps["context"].append(timed(lambda: what_fits(gpus, precisions=precisions, context=8192)))
        del os.environ["FITPLAN_TABLE_CACHE"]
        _clear_caches()
        what_fits(gpus, precisions=precisions, context=4096)  # stored (once), then read back below
        _clear_caches()
        sweeps["disk"].append(timed(lambda: what_fits(gpus, precisions=precisions, context=4096)))
    print(f"what_fits({len(gpus)} GPUs x {len(specs)} models x {len(precisions)} precisions = {len(frames[-1]):,} "
          f"rows), target < 300 ms: computed cold {show(sweeps['computed'])}, another context "
          f"{show(sweeps['context'])}; table read from the disk cache {show(sweeps['disk'])}")

    cli = [sys.executable, "-m", "planner.cli", "fits", "--gpu", "16GB"]
    first = _run_times(cli, args.repeat, fresh_cache=True)
    _run_times(cli, 1)  # fills this process's cache for the runs below
    print(f"`python -m planner.cli fits --gpu 16GB` end to end (this checkout), target < 0.5 s: "
          f"{show(_run_times(cli, args.repeat), scale=1, unit='s', digits=2)}; first run (empty cache) "
          f"{show(first, scale=1, unit='s', digits=2)}")
    script = _console_script(args.script)
    if script is None:
        print("installed `fitplan` console script: not found (pip install the project, or pass --script PATH)")
    else:
        location = _installed_location(script)
        print(f"installed `{script} fits --gpu 16GB` end to end ({location}): "
              f"{show(_run_times([script, 'fits', '--gpu', '16GB'], args.repeat), scale=1, unit='s', digits=2)} "
              "(target < 0.5 s)")
    cache.cleanup()
    return 0


def _run_times(command: list[str], repeat: int, fresh_cache: bool = False) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``command`` (run from the checkout) ``repeat`` times; ``fresh_cache``: each
    run with an empty FITPLAN_CACHE (a first run), else with this process's (filled by the first run)."""
    samples = []
    for _ in range(repeat):
        env = dict(os.environ)
        empty = tempfile.TemporaryDirectory(prefix="fitplan-bench-empty-") if fresh_cache else None
        if empty is not None:
            env["FITPLAN_CACHE"] = empty.name
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        samples.append((time.perf_counter() - start,
                        after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime))
        if empty is not None:
            empty.cleanup()
    return samples


def _console_script(given: str | None) -> str | None:
    """The `fitplan` script to time: --script, else one next to this interpreter, else one on PATH."""
    if given:
        return given
    beside = Path(sys.executable).parent / "fitplan"
    return str(beside) if beside.is_file() else shutil.which("fitplan")


def _installed_location(script: str) -> str:
    """Where the script's interpreter imports planner from (shows which code was timed). Run outside
    the checkout: `python -c` puts the current directory first on sys.path (a script does not)."""
    code = "import planner, pathlib; print(pathlib.Path(planner.__file__).parent.parent)"
    interpreter = Path(script).read_text(errors="replace").splitlines()[0].removeprefix("#!").strip()
    with tempfile.TemporaryDirectory() as outside:
        result = subprocess.run([interpreter, "-c", code], cwd=outside, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
