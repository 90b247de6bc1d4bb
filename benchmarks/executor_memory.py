"""Measured peak RSS of isolated executor runs next to the planner's device="cpu" prediction.

    python benchmarks/executor_memory.py [--steps-only | --load-only]

For all-MiniLM-L6-v2 (encoder, fidelity) and the tiny-llama fixture (causal LM, perplexity; built
first if missing) it runs fp32, int8, nf4 and a pruned + quantized candidate (50 % unstructured
magnitude pruning, then nf4 by module replacement) each in its own process (executors.execute,
isolate=True, latency measured as in a normal run) and prints the whole-process peak RSS (the highest
per-phase VmHWM of the child) next to planner.memory.cpu.estimate_cpu_process_memory, plus each phase's
peak.
Target: every whole-run prediction within 10 % of the measurement.

The prediction's machine part (start-up, loading and first-forward memory) is measured on this
machine by executors.machine_profile with tiny probe models (once, cached in the user cache; the first
isolated run measures it); its portable part was measured on other (random-initialised) models by
benchmarks/cpu_profile.py (planner/data/cpu_profile.toml). No constant is tuned to the models here.
Pass --fresh-machine-profile to measure the machine part again first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec  # noqa: E402

TARGET_PCT = 10.0
MIB = 2**20
LOAD_TIME = {
    "fp32": CompressionStrategy(),
    "int8": CompressionStrategy(quantization=QuantizationSpec(weights="int8")),
    "nf4": CompressionStrategy(quantization=QuantizationSpec(weights="nf4")),
}
STEPS = {
    "prune 0.5 + nf4": CompressionStrategy(sparsity=SparsitySpec(level=0.5),
                                           quantization=QuantizationSpec(weights="nf4")),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--load-only", action="store_true", help="only the load-time quantized candidates")
    group.add_argument("--steps-only", action="store_true", help="only the compression-step candidates")
    parser.add_argument("--fixture-steps", type=int, default=None,
                        help="training steps of the tiny-llama fixture to use (default: the standard build); "
                             "peak memory does not depend on them")
    parser.add_argument("--fresh-machine-profile", action="store_true",
                        help="measure this machine's part of the CPU memory model again before the runs")
    args = parser.parse_args()
    from executors import ensure_tiny_llm, execute, minilm_dir
    from executors.machine_profile import ensure_machine_profile

    machine = ensure_machine_profile(force=args.fresh_machine_profile)
    print("machine part (MiB): startup {:.1f}, bitsandbytes {:.1f}, load {}, first forward {}".format(
        machine.startup_bytes / MIB, machine.bitsandbytes_import_bytes / MIB,
        {k: round(v / MIB, 1) for k, v in machine.load_bytes.items()},
        {k: round(v / MIB, 1) for k, v in machine.forward_bytes.items()}), file=sys.stderr, flush=True)

    candidates = {} if args.steps_only else dict(LOAD_TIME)
    if not args.load_only:
        candidates.update(STEPS)
    from executors.fixtures import DEFAULT_STEPS

    tiny = ensure_tiny_llm(args.fixture_steps or DEFAULT_STEPS, progress=True)
    models = {"all-MiniLM-L6-v2": minilm_dir(), "tiny-llama-v1": Path(tiny.path)}
    rows, phase_rows = [], []
    with tempfile.TemporaryDirectory(prefix="fitplan-memory-") as tmp:
        for model_name, model_dir in models.items():
            for name, strategy in candidates.items():
                result = execute(model_dir, strategy, out_dir=Path(tmp) / model_name, device="cpu")
                predicted = result.prediction.peak_memory_bytes if result.prediction else None
                measured = result.peak_rss_bytes
                error = 100 * (predicted - measured) / measured if result.ok and predicted and measured else None
                rows.append({"model": model_name, "candidate": name, "status": result.status,
                             "measured_MiB": measured / MIB if measured else None,
                             "predicted_MiB": predicted / MIB if predicted else None, "error_%": error,
                             "weights_MiB": result.weight_bytes / MIB if result.weight_bytes else None,
                             "quality": result.quality.compressed if result.quality else None,
                             "within_10%": abs(error) <= TARGET_PCT if error is not None else None,
                             "reason": result.reason or ""})
                for phase in result.phases:
                    guess = result.prediction.phase_peak_bytes.get(phase.name) if result.prediction else None
                    phase_rows.append({"model": model_name, "candidate": name, "phase": phase.name,
                                       "measured_MiB": phase.peak_rss_bytes / MIB if phase.peak_rss_bytes else None,
                                       "predicted_MiB": guess / MIB if guess else None})
                print(f"  {model_name} {name}: {result.status} {rows[-1]['measured_MiB'] or 0:.0f} MiB measured, "
                      f"{rows[-1]['predicted_MiB'] or 0:.0f} predicted", file=sys.stderr, flush=True)
    frame = pd.DataFrame(rows)
    phases = pd.DataFrame(phase_rows)
    phases["error_%"] = 100 * (phases["predicted_MiB"] - phases["measured_MiB"]) / phases["measured_MiB"]
    with pd.option_context("display.width", 220, "display.max_columns", 20, "display.max_colwidth", 60):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        print()
        print(phases.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    errors = frame["error_%"].dropna().abs()
    print(f"\nwhole-run peak RSS: {len(errors)} predictions, max |error| {errors.max():.1f} %, "
          f"{(errors <= TARGET_PCT).sum()} within {TARGET_PCT:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
