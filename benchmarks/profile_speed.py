"""Wall time of ``fitplan profile`` on MiniLM and on the tiny causal LM, and where it goes.

    python benchmarks/profile_speed.py [--models minilm,tiny-llm] [--repeats 2] [--variants replay,full]
        [--threads auto,1,2] [--formats LIST] [--sparsity LIST] [--baseline-checkout DIR]

Each run is a fresh process (``python -m planner.cli profile MODEL --no-cache --json``, everything
included: imports, loading, the reference pass, the Wanda calibration pass, every entry and block
drop) with an empty ``FITPLAN_CACHE``. Variants: ``replay`` (the default path: evaluations start at
the changed block from the intact model's recorded block outputs) and ``full`` (``--no-replay``: the
whole model for every entry; the scores are the same). ``--threads``: torch threads (``auto``:
fitplan's choice, torch's count lowered to the cores other processes leave idle; a number: that many;
for the baseline checkout, ``OMP_NUM_THREADS``). ``--baseline-checkout DIR`` also times another checkout's code on the same
machine (e.g. ``/work/main`` before this change; its own default options), interleaved with the
runs here so that a shared machine's load hits both alike.

Target (issue 11, "profile once, solve many budgets"): a few minutes on this CPU for each model;
here <= 120 s each on a quiet machine (the lab must finish MiniLM end to end within 10 minutes).
Runs are interleaved variant by variant and the median is printed with the 1-minute load average
seen at the start of each run: on a shared machine compare ratios of runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_S = 120.0


def model_dir(name: str) -> str:
    import executors

    if name == "minilm":
        return str(executors.minilm_dir())
    if name == "tiny-llm":
        return str(executors.ensure_tiny_llm(progress=True).path)
    raise SystemExit(f"--models: unknown model {name!r}; use minilm, tiny-llm")


def run_once(model: str, *, checkout: Path, replay: bool, threads: str, formats: str | None,
             sparsity: str | None) -> dict:
    command = [sys.executable, "-m", "planner.cli", "profile", model, "--no-cache", "--json"]
    if formats is not None:
        command += ["--formats", formats]
    if sparsity is not None:
        command += ["--sparsity", sparsity]
    if checkout == ROOT:  # flags another checkout may not have
        if not replay:
            command.append("--no-replay")
        if threads != "auto":
            command += ["--threads", threads]
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    if checkout != ROOT and threads != "auto":
        env["OMP_NUM_THREADS"] = threads
    with tempfile.TemporaryDirectory() as cache:
        env["FITPLAN_CACHE"] = cache
        load = os.getloadavg()[0]
        began = time.monotonic()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=checkout)
        wall = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    payload = json.loads(done.stdout)
    profile = payload["profile"]
    cost = profile.get("cost") or {}
    return {"wall_s": wall, "load": load, "measurements": len(profile["entries"]) + len(profile["block_drop"]),
            "options": len({e["option"] for e in profile["entries"]}), "profile_s": profile["total_seconds"],
            "evaluate_s": cost.get("evaluate_seconds"), "apply_s": cost.get("apply_seconds"),
            "used_threads": cost.get("threads"),
            "replayed": (cost["block_passes_replayed"] / cost["block_passes"]) if cost.get("block_passes") else None,
            "entries": {(e["block"], e["group"], e["option"]): e["retained_pct"] for e in profile["entries"]},
            "seconds": {(e["block"], e["group"], e["option"]): e["seconds"] for e in profile["entries"]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,tiny-llm")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default="replay,full", help="replay and/or full")
    parser.add_argument("--threads", default="auto", help="comma-separated: auto (fitplan's choice: torch's count "
                        "lowered to the idle cores) and/or numbers")
    parser.add_argument("--formats", help="--formats of fitplan profile (default: its defaults)")
    parser.add_argument("--sparsity", help="--sparsity of fitplan profile (default: its defaults)")
    parser.add_argument("--baseline-checkout", type=Path, help="also time this checkout's fitplan profile")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not set(variants) <= {"replay", "full"}:
        raise SystemExit("--variants: use replay and/or full")
    threads = [t.strip() for t in args.threads.split(",") if t.strip()]
    configs = [(ROOT, v, t) for v in variants for t in threads]
    if args.baseline_checkout is not None:
        configs += [(args.baseline_checkout.resolve(), "baseline", t) for t in threads]
    rows, per_option = [], []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        model = model_dir(name)
        runs: dict[tuple, list[dict]] = {c: [] for c in configs}
        for repeat in range(args.repeats):
            for config in configs:  # interleaved: each repeat runs every variant once
                checkout, variant, thread = config
                result = run_once(model, checkout=checkout, replay=variant != "full", threads=thread,
                                  formats=args.formats, sparsity=args.sparsity)
                runs[config].append(result)
                print(f"{name} {variant:8s} threads={thread:7s} run {repeat + 1}: {result['wall_s']:6.1f} s wall "
                      f"(load {result['load']:.1f}), {result['measurements']} measurements", file=sys.stderr)
        reference = runs[configs[0]][0]["entries"]
        for config, results in runs.items():
            seconds = results[0]["seconds"]
            options = dict.fromkeys(option for _, _, option in seconds)
            per_option.append((name, config[1], config[2], {o: statistics.mean(v for k, v in seconds.items()
                                                                              if k[2] == o) for o in options}))
        for config, results in runs.items():
            checkout, variant, thread = config
            same = [r for r in results if r["entries"].keys() == reference.keys()]
            worst = max((abs(r["entries"][k] - v) / v for r in same for k, v in reference.items()), default=None)
            used = sorted({r["used_threads"] for r in results if r["used_threads"] is not None})
            rows.append({"model": name, "variant": variant,
                         "threads": thread + (f"={'/'.join(map(str, used))}" if used and thread == "auto" else ""),
                         "options": results[0]["options"], "measurements": results[0]["measurements"],
                         "wall_s": statistics.median(r["wall_s"] for r in results),
                         "evaluate_s": _median([r["evaluate_s"] for r in results]),
                         "apply_s": _median([r["apply_s"] for r in results]),
                         "replayed": _median([r["replayed"] for r in results]),
                         "load": statistics.median(r["load"] for r in results),
                         "max_rel_diff": worst, "runs": len(results)})
    print(f"fitplan profile, median of {args.repeats} fresh-process run(s) per variant (wall s, everything "
          f"included); target <= {TARGET_S:.0f} s per model on a quiet machine")
    header = (f"{'model':9s} {'variant':8s} {'thr':>7s} {'opts':>4s} {'meas':>4s} {'wall s':>7s} {'eval s':>7s} "
              f"{'apply s':>7s} {'replay':>6s} {'load':>5s} {'vs ref':>8s}")
    print(header)
    for row in rows:
        replayed = f"{row['replayed']:.0%}" if row["replayed"] is not None else "-"
        diff = f"{row['max_rel_diff']:.1e}" if row["max_rel_diff"] is not None else "-"
        print(f"{row['model']:9s} {row['variant']:8s} {row['threads']:>7s} {row['options']:4d} "
              f"{row['measurements']:4d} {row['wall_s']:7.1f} {_fmt(row['evaluate_s'])} {_fmt(row['apply_s'])} "
              f"{replayed:>6s} {row['load']:5.1f} {diff:>8s}")
    print("\nseconds per entry (quantize or mask, evaluate, restore), mean over the blocks and groups of the first run:")
    for name, variant, thread, means in per_option:
        print(f"{name} {variant} threads={thread}: " + ", ".join(f"{o.removeprefix('sparsity:')} {v:.2f}"
                                                                 for o, v in means.items()))
    print("vs ref: largest relative difference of an entry's retained % from the first variant's first run "
          "(entries both measured; '-' when the option sets differ)")
    return 0


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None) -> str:
    return f"{value:7.1f}" if value is not None else f"{'-':>7s}"


if __name__ == "__main__":
    raise SystemExit(main())
