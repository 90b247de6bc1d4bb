"""Refinement on real measurements: held-out error of predictions from the priors vs calibrated by measured runs.

The records are real executions (``executors.execute``, isolated, on this machine's CPU) of the MiniLM
encoder (fidelity, embedding metric family) and the tiny causal LM fixture (perplexity), stored as
:class:`planner.accuracy.CalibrationRecord` lines in ``benchmarks/data/calibration_runs/records.jsonl``
with the two models' ``config.json`` beside them (``models/<name>/``), so the benchmark runs without torch.

Quality, for each model (the store only ever holds records of that model's family):

- leave-one-out: each record is predicted from the priors alone, and with every *other* record of the
  model as the calibration store (the residual model of ``planner.accuracy.residual``); the same from the
  model's sensitivity profile (``profiles/<model>.json``, written by ``executors.profile`` on this machine
  with its defaults: per-block bf16 / int8 / nf4 / fp4 / hqq-int8..2 / unstructured / 2:4 / ffn / heads
  effects, block drops, and each option on every block at once) alone and with the store. The
  whole-model entries are runs of the same uniform strategies most records are, measured by the profiler:
  the profile column is then what the loop starts from, not a test of how per-block effects compose
  (that is ``benchmarks/closed_loop.py``'s per-block allocations);
- learning curve: the records in a fixed shuffled order (seed 0); the first k form the store and the
  remaining ones are predicted (from the profile when there is one), k = 2, 4, 8, 12.

Figures (``planner.accuracy.predictor_agreement`` on quality *loss*, percentage points of the record's
own metric): MAE, median absolute error, Spearman rank correlation, coverage of the 80% interval.
Memory and latency: the same leave-one-out with ``CalibrationStore.device_correction`` (error of
predicted vs measured, %).

    python benchmarks/calibration_refine.py [--records FILE] [--rows]
    python benchmarks/calibration_refine.py --collect   # re-run the executions (exec extra; ~20 s each)
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parent / "data" / "calibration_runs"
RECORDS = DATA / "records.jsonl"
CURVE = (2, 4, 8, 12)

QUANT = ("nf4", "fp4", "int8", "hqq-int8", "hqq-int4", "hqq-int3", "hqq-int2")
STRATEGIES = [{"quantization": {"weights": f}} for f in QUANT] + [
    {"sparsity": {"level": 0.3}}, {"sparsity": {"level": 0.5}}, {"sparsity": {"level": 0.7}},
    {"sparsity": {"level": 0.5, "method": "wanda"}}, {"sparsity": {"level": 0.5, "pattern": "2:4"}},
    {"sparsity": {"level": 0.5, "pattern": "heads"}}, {"sparsity": {"level": 0.25, "pattern": "layers"}},
    {"sparsity": {"level": 0.25, "pattern": "ffn"}},
    {"sparsity": {"level": 0.5, "pattern": "ffn"}},
    {"low_rank": {"rank_ratio": 0.5}}, {"low_rank": {"rank_ratio": 0.25}},
    {"quantization": {"weights": "nf4"}, "sparsity": {"level": 0.3}},
    {"quantization": {"weights": "hqq-int4"}, "sparsity": {"level": 0.25, "pattern": "ffn"}},
    {"quantization": {"weights": "int8"}, "sparsity": {"level": 0.5, "method": "wanda"}},
]


# ------------------------------------------------------------------------------------------------
# Collecting the records (needs the exec extra)
# ------------------------------------------------------------------------------------------------
def collect(out_dir: Path, records_path: Path) -> None:
    """Execute every strategy on both models and write the records file (never overwrites one)."""
    import shutil

    import executors
    from executors.fixtures import ensure_tiny_llm, minilm_dir
    from executors.preflight import check_strategy
    from planner.accuracy.calibration import record_from_result
    from planner.errors import FitplanError
    from planner.strategy import CompressionStrategy

    if records_path.exists():
        raise SystemExit(f"{records_path} exists; move it away first (records are never overwritten).")
    models = {"minilm": (minilm_dir(), "fidelity"), "tiny-llama": (Path(ensure_tiny_llm().path), "perplexity")}
    lines = []
    for name, (model_dir, evaluator) in models.items():
        portable = DATA / "models" / name
        portable.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(model_dir) / "config.json", portable / "config.json")
        for strategy in STRATEGIES:
            try:
                check_strategy(Path(model_dir), CompressionStrategy.model_validate(strategy))
            except FitplanError as error:
                print(f"{name:10} skipped: {str(error).splitlines()[0][:100]}", flush=True)
                continue
            result = executors.execute(model_dir, strategy, evaluator=evaluator, out_dir=out_dir / name)
            print(f"{name:10} {result.strategy_summary:32} {result.status:6} "
                  f"{result.quality.retained_pct if result.quality else result.reason}", flush=True)
            payload = json.loads(result.model_dump_json())
            record = record_from_result(payload, f"executors.execute {result.run_id}")
            if record is None:
                continue
            prediction = result.prediction
            env = result.environment
            record = record.model_copy(update={
                "model_name": str(portable.relative_to(DATA.parents[1])),
                "device": f"{env.device_name} ({env.cpu_count} threads)" if env else result.device,
                "predicted_memory_bytes": prediction.peak_memory_bytes if prediction else None,
                "predicted_latency_ms": prediction.latency_ms if prediction else None,
                "timestamp": result.started_at,
                "source": f"benchmarks/calibration_refine.py --collect: executors.execute run {result.run_id}, "
                          f"evaluator {evaluator}, isolated, OMP_NUM_THREADS=1",
            })
            lines.append(record.model_dump_json())
    records_path.parent.mkdir(parents=True, exist_ok=True)
    records_path.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} records to {records_path}")


# ------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------
def load_records(path: Path):
    """Records with their model names resolved to the shipped config directories."""
    from planner.accuracy import CalibrationRecord

    root = DATA.parents[1]
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = CalibrationRecord.model_validate_json(line)
            records.append(record.model_copy(update={"model_name": str(root / record.model_name)}))
    return records


def load_profile(model_name: str):
    """The shipped sensitivity profile of a model (``profiles/<name>.json``, written by ``executors.profile``
    on this machine), or None."""
    from planner.accuracy import SensitivityProfile

    path = DATA / "profiles" / f"{Path(model_name).name}.json"
    return SensitivityProfile.load(path) if path.is_file() else None


def predict(record, store, profile=None):
    from planner.accuracy import predict_quality
    from planner.strategy import CompressionStrategy

    return predict_quality(record.model_name, CompressionStrategy.model_validate(record.strategy),
                           metric=record.metric_family or "accuracy", calibration=store, profile=profile)


def agreement(rows):
    from planner.accuracy import predictor_agreement

    return predictor_agreement([100 - p.retained_pct for _, p in rows],
                               [100 - r.measured_retained_pct for r, _ in rows],
                               low=[100 - p.high_pct for _, p in rows], high=[100 - p.low_pct for _, p in rows])


def quality_figures(records, profile=None, curve: bool = True) -> dict:
    """Predictions of each record from the priors (``prior``), and leave-one-out with the other records as
    the store (``loo``); with a profile also from the profile alone (``profile``) and profile + store
    (``profile_loo``); ``curve``: k -> (before, after) agreement on the records after the first k."""
    from planner.accuracy import CalibrationStore

    out = {"prior": [(r, predict(r, None)) for r in records],
           "loo": [(r, predict(r, CalibrationStore([o for o in records if o is not r]))) for r in records]}
    if profile is not None:
        out["profile"] = [(r, predict(r, None, profile)) for r in records]
        out["profile_loo"] = [(r, predict(r, CalibrationStore([o for o in records if o is not r]), profile))
                              for r in records]
    order = list(records)
    random.Random(0).shuffle(order)
    out["curve"] = {}
    for k in CURVE if curve else ():
        if k >= len(order):
            continue
        store = CalibrationStore(order[:k])
        held = order[k:]
        out["curve"][k] = (agreement([(r, predict(r, None, profile)) for r in held]),
                           agreement([(r, predict(r, store, profile)) for r in held]))
    return out


def device_figures(records, quantity: str) -> tuple[list[float], list[float]]:
    """Leave-one-out error % of the raw and the corrected prediction of memory or latency."""
    from planner.accuracy import CalibrationStore

    raw, corrected = [], []
    for r in records:
        measured, predicted = ((r.measured_memory_bytes, r.predicted_memory_bytes) if quantity == "memory"
                               else (r.measured_latency_ms, r.predicted_latency_ms))
        if not measured or not predicted:
            continue
        store = CalibrationStore([o for o in records if o is not r])
        factor = store.device_correction(r.family, r.device, quantity, r.params).factor
        raw.append(100 * (predicted - measured) / measured)
        corrected.append(100 * (predicted * factor - measured) / measured)
    return raw, corrected


def fmt(a) -> str:
    spearman = f"{a.spearman:5.2f}" if a.spearman is not None else "  n/a"
    return f"{a.mae:6.2f} {a.median_abs_error:6.2f} {spearman} {a.coverage:5.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=Path, default=RECORDS, help="records file (default: the shipped one)")
    parser.add_argument("--rows", action="store_true", help="print every held-out record")
    parser.add_argument("--collect", action="store_true", help="re-run the executions and write --records")
    parser.add_argument("--runs", type=Path, default=Path("calibration-runs"), help="with --collect: run directory")
    args = parser.parse_args(argv)
    if args.collect:
        collect(args.runs, args.records)
    records = load_records(args.records)
    by_model: dict[str, list] = {}
    for r in records:
        by_model.setdefault(r.model_name, []).append(r)
    print(f"{len(records)} measured runs ({args.records.name}); quality loss, percentage points of each run's metric")
    print(f"{'model':12} {'predictor':22} {'n':>3} {'MAE':>6} {'median':>6} {'rho':>5} {'80%cov':>6}")
    for model, rs in by_model.items():
        name = Path(model).name
        profile = load_profile(model)
        figures = quality_figures(rs, profile)
        base = "profile" if profile is not None else "priors"
        print(f"{name:12} {'priors':22} {len(rs):3d} {fmt(agreement(figures['prior']))}")
        print(f"{name:12} {'priors + calibration':22} {len(rs):3d} {fmt(agreement(figures['loo']))}")
        if profile is not None:
            print(f"{name:12} {'profile':22} {len(rs):3d} {fmt(agreement(figures['profile']))}")
            print(f"{name:12} {'profile + calibration':22} {len(rs):3d} {fmt(agreement(figures['profile_loo']))}")
        for k, (before, after) in figures["curve"].items():
            print(f"{name:12} {f'first {k}: {base}':22} {before.n:3d} {fmt(before)}")
            print(f"{name:12} {f'first {k}: + calibration':22} {after.n:3d} {fmt(after)}")
        if args.rows:
            for (r, p), (_, c) in zip(figures["prior"], figures["profile_loo" if profile is not None else "loo"]):
                print(f"    {json.dumps(r.strategy, separators=(',', ':'))[:60]:60} measured "
                      f"{r.measured_retained_pct:6.2f} prior {p.retained_pct:6.2f} calibrated {c.retained_pct:6.2f} "
                      f"[{c.low_pct:6.2f}, {c.high_pct:6.2f}]")
        for quantity in ("memory", "latency"):
            raw, corrected = device_figures(rs, quantity)
            if raw:
                print(f"{name:12} {quantity} error %, LOO: raw median |e| {statistics.median(map(abs, raw)):.1f} "
                      f"-> corrected {statistics.median(map(abs, corrected)):.1f} (n={len(raw)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
