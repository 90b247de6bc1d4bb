"""Leave-one-row-out accuracy of the quality priors (planner/data/accuracy_priors.toml).

For every cited observation the rules are refitted without it and the held-out row is predicted:
the table reports, per technique and overall, the median absolute error of the predicted quality
retained (percentage points on the row's own metric), the share of cited values inside the
predicted 80% interval (target >= 80%; a cited figure missing it by less than its own last digit counts
as inside) and the mean interval width (points). The same with every row
of the held-out row's source left out (leave-one-source-out; the source is the row id's first word,
e.g. all ``wanda-*`` rows together), the in-sample figures (all rows fitted) for comparison, and the
cost of one ``predict_quality`` call over a grid of strategies for Llama-3.1-8B (target < 100 us per
call; first call per part vs cached). Pure arithmetic: no torch, runs in a few seconds (timings on a
shared machine vary: quote medians).

The priors are also scored against the real executor runs shipped in
``benchmarks/data/calibration_runs/records.jsonl`` (MiniLM fidelity, tiny causal LM perplexity, measured
on this machine; see ``calibration_refine.py``): priors only, never fitted to them. Per technique the
mean absolute error of the predicted quality retained and the 80% coverage; ``--rows`` lists each run.

    python benchmarks/accuracy_priors.py [--rows] [--json] [--store DIR ...]

``--store DIR`` also scores the priors against measured runs: every successful executors run in the
calibration store DIR (``results.jsonl`` lines, :mod:`planner.accuracy.calibration`) is predicted from
the priors alone, on the run's own metric family, and compared with its measured quality.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.accuracy.priors import load_priors, row_noise  # noqa: E402

TARGET_COVERAGE = 0.80
RESOLUTION_PP = 0.05
"""a measured retained % counts as inside an interval it misses by less than this (measurement noise; a
measured 100.00 against an interval ending at 99.98)"""


def source_key(row_id: str) -> str:
    """The source a row comes from: its id's first word (``wanda-llama2-7b-...`` -> ``wanda``)."""
    return row_id.split("-", 1)[0]


def evaluate(leave_out: str | None) -> list[dict]:
    """Predictions of each fitted point row; ``leave_out`` = None (in-sample), "row" or "source"."""
    priors = load_priors()
    rows = [r for r in priors.data.rows if r.kind == "point" and r.fit]
    out = []
    for row in rows:
        if leave_out == "row":
            model = priors.with_rows([r for r in priors.data.rows if r.id != row.id])
        elif leave_out == "source":
            model = priors.with_rows([r for r in priors.data.rows if source_key(r.id) != source_key(row.id)])
        else:
            model = priors
        predicted, low, high = model.predict_row(row)
        cited = row.cited_retained_pct
        # a cited figure is only known to its last digit: it counts as inside an interval it misses by less
        # than that resolution (row_noise, the same tolerance the fit and the tests give it)
        tolerance = cited * priors.metric_scale(row.metric) * row_noise(row, priors.data)
        out.append({"id": row.id, "technique": row.technique, "metric": row.metric, "cited": cited,
                    "predicted": predicted, "low": low, "high": high, "abs_error": abs(predicted - cited),
                    "inside": low - tolerance <= cited <= high + tolerance or (cited > 100 and high >= 99.99),
                    "width": high - low})
    return out


def summarise(results: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r["technique"], []).append(r)
    groups["all"] = results
    return [{"technique": name, "rows": len(rs),
             "median_abs_error_pp": statistics.median(r["abs_error"] for r in rs),
             "coverage_80": sum(r["inside"] for r in rs) / len(rs),
             "mean_width_pp": statistics.fmean(r["width"] for r in rs)} for name, rs in groups.items()]


def strategy_grid():
    from planner.strategy import CompressionStrategy, DistillationSpec, QuantizationSpec, SparsitySpec

    formats = ("nf4", "int8", "gptq-int4", "awq-int4", "fp8", "fp4", "nf4-dq", None)
    sparsity = (None, SparsitySpec(level=0.5, pattern="2:4", method="wanda"), SparsitySpec(level=0.3, method="wanda"),
                SparsitySpec(level=0.25, pattern="layers"))
    distill = (None, DistillationSpec(depth_ratio=0.75), DistillationSpec(depth_ratio=0.5, width_ratio=0.75))
    kv = (None, "fp8")
    grid = []
    for fmt in formats:
        for sp in sparsity:
            for dist in distill:
                for cache in kv:
                    if fmt is None and cache:
                        continue
                    q = QuantizationSpec(weights=fmt, kv_cache=cache) if fmt else None
                    grid.append(CompressionStrategy(quantization=q, sparsity=sp, distillation=dist))
    return grid


def time_predictions(repeats: int = 5) -> dict:
    import time

    from planner.accuracy import predict_quality
    from planner.accuracy.predict import _part_cache
    from planner.models import get_model

    spec = get_model("meta-llama/Llama-3.1-8B")
    grid = strategy_grid()
    _part_cache.clear()
    start = time.perf_counter()
    for strategy in grid:
        predict_quality(spec, strategy)
    cold = (time.perf_counter() - start) / len(grid)
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        for strategy in grid:
            predict_quality(spec, strategy)
        warm.append((time.perf_counter() - start) / len(grid))
    return {"strategies": len(grid), "cold_us": cold * 1e6, "warm_median_us": statistics.median(warm) * 1e6}


def run_technique(strategy: dict) -> str:
    """The prior rule a shipped run exercises: 'structure' for heads / FFN / layer removal and students,
    else its technique (stacked runs: 'stacked')."""
    parts = [k for k in ("quantization", "sparsity", "low_rank", "distillation") if strategy.get(k)]
    if len(parts) != 1:
        return "stacked"
    sparsity = strategy.get("sparsity") or {}
    if parts == ["distillation"] or sparsity.get("pattern") in ("heads", "ffn", "layers"):
        return "structure"
    return parts[0]


def score_runs() -> list[dict]:
    """Priors-only prediction vs measured quality of every shipped executor run."""
    from benchmarks.calibration_refine import RECORDS, load_records, predict

    out = []
    for record in load_records(RECORDS):
        p = predict(record, None)
        measured = min(record.measured_retained_pct, 100.0)
        strategy = {k: v for k, v in record.strategy.items() if k != "version"}
        out.append({"model": Path(record.model_name).name, "technique": run_technique(strategy),
                    "strategy": ", ".join(f"{k}:{_brief(v)}" for k, v in strategy.items()), "metric": p.metric,
                    "measured": measured, "predicted": p.retained_pct, "low": p.low_pct, "high": p.high_pct,
                    "abs_error": abs(p.retained_pct - measured),
                    "inside": p.low_pct - RESOLUTION_PP <= measured <= p.high_pct + RESOLUTION_PP})
    return out


def _brief(spec: dict) -> str:
    keys = ("weights", "level", "pattern", "rank_ratio", "depth_ratio")
    return "/".join(str(spec[k]) for k in keys if k in spec)


def summarise_runs(runs: list[dict]) -> list[dict]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["technique"]), []).append(r)
        groups.setdefault((r["model"], "all"), []).append(r)
    return [{"model": m, "technique": t, "runs": len(rs), "mae_pp": statistics.fmean(r["abs_error"] for r in rs),
             "coverage_80": sum(r["inside"] for r in rs) / len(rs)} for (m, t), rs in sorted(groups.items())]


def score_store(directory: str) -> tuple[list[dict], list[str]]:
    """Prior prediction vs measured quality for each run of a calibration store."""
    from pydantic import ValidationError

    from planner.accuracy import CalibrationStore, predict_quality
    from planner.errors import FitplanError
    from planner.models import get_model
    from planner.strategy import CompressionStrategy

    store = CalibrationStore.load(directory)
    out, skipped = [], list(store.skipped)
    for record in store.records:
        if not record.techniques:
            continue
        try:
            strategy = CompressionStrategy.model_validate(record.strategy)
            spec = get_model(record.model_name)
            p = predict_quality(spec, strategy, metric=record.metric_family or "accuracy")
        except (FitplanError, ValidationError, OSError) as error:
            skipped.append(f"{record.source}: {str(error).splitlines()[0][:100]}")
            continue
        measured = min(record.measured_retained_pct, 100.0)
        inside = p.low_pct - RESOLUTION_PP <= measured <= p.high_pct + RESOLUTION_PP
        out.append({"model": spec.name, "strategy": str(strategy), "metric": p.metric, "measured": measured,
                    "predicted": p.retained_pct, "low": p.low_pct, "high": p.high_pct,
                    "inside": inside, "abs_error": abs(p.retained_pct - measured)})
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", action="store_true", help="print every held-out row")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--store", action="append", default=[], metavar="DIR",
                        help="also score the priors against the measured runs of this calibration store")
    args = parser.parse_args(argv)
    loo = evaluate("row")
    loso = evaluate("source")
    fitted = evaluate(None)
    runs = score_runs()
    summary = {"leave_one_out": summarise(loo), "leave_one_source_out": summarise(loso),
               "in_sample": summarise(fitted), "shipped_runs": summarise_runs(runs)}
    if args.json:
        summary["speed"] = time_predictions()
        print(json.dumps(summary, indent=1))
        return 0
    if args.rows:
        print(f"{'row (held out)':44} {'cited':>6} {'pred':>6} {'80% interval':>15}")
        for r in loo:
            mark = "" if r["inside"] else "  miss"
            print(f"{r['id'][:44]:44} {r['cited']:6.2f} {r['predicted']:6.2f} [{r['low']:6.2f},{r['high']:6.2f}]{mark}")
        print()
    for label, rows in (("leave-one-row-out", summary["leave_one_out"]),
                        ("leave-one-source-out", summary["leave_one_source_out"]),
                        ("in-sample", summary["in_sample"])):
        print(f"{label}: quality retained, % of the uncompressed model (row's own metric)")
        print(f"  {'technique':13} {'rows':>4} {'median |err| pp':>15} {'80% coverage':>12} {'mean width pp':>13}")
        for s in rows:
            print(f"  {s['technique']:13} {s['rows']:4d} {s['median_abs_error_pp']:15.2f} "
                  f"{s['coverage_80']:12.0%} {s['mean_width_pp']:13.1f}")
    overall = summary["leave_one_out"][-1]
    met = overall["coverage_80"] >= TARGET_COVERAGE
    print(f"target: leave-one-out coverage >= {TARGET_COVERAGE:.0%}: {'met' if met else 'MISSED'} "
          f"({overall['coverage_80']:.0%})")
    print("priors only vs the shipped executor runs (benchmarks/data/calibration_runs), % retained")
    if args.rows:
        for r in runs:
            mark = "" if r["inside"] else "  miss"
            print(f"  {r['model'][:10]:10} {r['strategy'][:30]:30} {r['metric'][:4]} measured {r['measured']:6.2f} "
                  f"prior {r['predicted']:6.2f} [{r['low']:6.2f},{r['high']:6.2f}]{mark}")
    print(f"  {'model':10} {'technique':13} {'runs':>4} {'MAE pp':>7} {'80% coverage':>12}")
    for s in summary["shipped_runs"]:
        print(f"  {s['model'][:10]:10} {s['technique']:13} {s['runs']:4d} {s['mae_pp']:7.2f} {s['coverage_80']:12.0%}")
    for directory in args.store:
        scored, skipped = score_store(directory)
        print(f"measured runs in {directory}: {len(scored)} scored, {len(skipped)} skipped")
        for r in scored:
            mark = "" if r["inside"] else "  miss"
            print(f"  {r['model'][-28:]:28} {r['strategy'][:22]:22} {r['metric'][:4]} measured {r['measured']:6.2f} "
                  f"prior {r['predicted']:6.2f} [{r['low']:6.2f},{r['high']:6.2f}]{mark}")
        if scored:
            print(f"  median |err| {statistics.median(r['abs_error'] for r in scored):.2f} pp, 80% coverage "
                  f"{sum(r['inside'] for r in scored) / len(scored):.0%}")
        for line in skipped[:5]:
            print(f"  skipped {line}")
    speed = time_predictions()
    print(f"predict_quality, Llama-3.1-8B, {speed['strategies']} strategies: first call per part "
          f"{speed['cold_us']:.0f} us, cached {speed['warm_median_us']:.0f} us per call (target < 100 us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
