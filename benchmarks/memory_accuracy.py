"""Accuracy of fitplan's memory estimates on published measurements.

Runs the estimator over benchmarks/data/public_memory_measurements.csv (published measurements, see
public_memory_measurements.md for their sources) and prints, per source
group and overall, the median and p90 absolute % error of the point estimate, the share of rows where
the safe bound is >= the measurement, and the median safe/measured ratio, next to two baselines:

- weights-only (params x bytes per parameter of the precision, HF Accelerate style);
- llmfit style: params x bytes + fp16 KV cache + 0.5 GB.

Rows are evaluated by ``mode`` through ``EVALUATORS`` (inference, weights-only, ...); other modes can
be added by registering an evaluator. Each row is compared with the total its ``measure_kind`` names
(peak allocated / nvidia-smi / model footprint) in the unit it names (GiB vs GB).

    python benchmarks/memory_accuracy.py [--csv PATH] [--rows] [--group QFULL]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from planner import estimate_memory, get_model  # noqa: E402
from planner.errors import FitplanError  # noqa: E402
from planner.memory import weight_bytes  # noqa: E402
from planner.memory.result import GIB  # noqa: E402

import same_measurements  # noqa: E402  (rows present in both data files)
import more_rows  # noqa: E402  (benchmarks/more_rows.py: the second published set)
import training_rows  # noqa: E402  (benchmarks/training_rows.py: fine-tuning evaluators)

DEFAULT_CSV = ROOT / "benchmarks" / "data" / "public_memory_measurements.csv"
MODELS_FILE = ROOT / "benchmarks" / "data" / "calibration_models.json"
GB = 1e9

# CSV precision strings -> fitplan formats (first matching prefix wins).
PRECISIONS: list[tuple[str, str]] = [
    ("fp8 (fine-grained block", "fp8-block"), ("gptq int8", "gptq-int8"), ("gptq int4", "gptq-int4"),
    ("awq int4", "awq-int4"), ("bnb nf4 + double-quant", "nf4-dq"), ("bnb nf4", "nf4"),
    ("bnb llm.int8", "int8"), ("bf16", "bf16"), ("fp32", "fp32"), ("fp16", "fp16"),
]

# GPU column -> catalog name (it decides the cuBLAS workspace size).
GPUS: list[tuple[str, str]] = [
    ("H20", "NVIDIA H20"), ("A100-80GB", "NVIDIA A100 80GB SXM"), ("A100-SXM4-40GB", "NVIDIA A100 40GB SXM"),
    ("A100-40GB", "NVIDIA A100 40GB SXM"), ("V100-SXM2-16GB", "NVIDIA V100 SXM2 16GB"), ("T4", "NVIDIA T4"), ("A10G", "NVIDIA A10G"),
]


@dataclass(frozen=True)
class GroupSettings:
    """How a source ran its models: engine, engine options, and which moment its number reflects."""

    engine: str
    options: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    compare: str = "peak"
    compare_why: str = ""


# One row per source group: the engine and the documented framework behaviour (not fitted).
SETTINGS: dict[str, GroupSettings] = {
    "QFULL": GroupSettings("hf", {"transformers_version": "4.51.3", "attention": "flash"},
                           "transformers 4.51.3 generate (logits_to_keep=1), FlashAttention-2",
                           compare="decode",
                           compare_why="all 64 bf16/FP8/GPTQ rows equal weights + KV(prompt+2048) + the 32 MiB "
                                       "cuBLAS workspace within 5 MiB at every prompt length, while an unchunked "
                                       "prefill must also hold >= 3 x T x F + 4 x T x d activations (e.g. +4.4 GiB "
                                       "for Qwen3-32B at 30720): the table reports the memory held at the end of "
                                       "generation, so the point estimate and the bound of that phase are compared "
                                       "(the run's peak and safe_gib include the prefill: see peak_* columns)"),
    "QW2": GroupSettings("hf", {"transformers_version": "4.38.2"},
                         "transformers 4.38.2: lm_head and fp32 cast over the whole prompt (calibration README)"),
    "QW1": GroupSettings("hf", {"hf_logits": "full", "hf_cache": "legacy"},
                         "Qwen-1 remote code on transformers 4.3x: lm_head over every input position and a "
                         "tuple past_key_values (the previous step's cache is alive during each step)"),
    "LG": GroupSettings("litgpt", {}, "LitGPT generate (2023-10): preallocated KV, untied lm_head, bnb on all Linears"),
    "HFT": GroupSettings("hf", {"cuda_module_loading": "eager"},
                         "2021-era CUDA 11 without lazy loading: the doc measures a 1343 MiB context"),
    "INT8": GroupSettings("hf", {}, "transformers model.get_memory_footprint()"),
    "BNB": GroupSettings("hf", {}, "TRL SFTTrainer on transformers"),
}

# measure_kind -> (unit bytes, which total). Qwen's speed-benchmark scripts divide bytes by 1024**2 for
# the Qwen3 table (README: MB read as MiB). The Qwen2 table of the same benchmark is read in GiB too: in
# GB, QW2-02 (27.61 -> 25.71 GiB) would be below the bf16 + fp32 logits that transformers 4.38 must hold
# for its 30720-token prompt alone (30720 x 151936 x 6 bytes = 26.08 GiB).
MEASURES: list[tuple[str, str | None, float, str]] = [
    ("peak_alloc_GiB", None, GIB, "allocated"),
    ("peak_alloc_GB", None, GB, "allocated"),
    ("peak_reported_GB", "QW2", GIB, "allocated"),
    ("peak_reported_GB", None, GB, "allocated"),
    ("reported_GB", None, GB, "allocated"),
    ("nvidia-smi_GiB", None, GIB, "device"),
    ("reported_footprint_GB", None, GB, "weights"),
]


def _lookup(table: list[tuple[str, str]], text: str, what: str) -> str:
    lowered = text.lower()
    for prefix, value in table:
        if lowered.startswith(prefix.lower()) or prefix.lower() in lowered:
            return value
    raise KeyError(f"no {what} mapping for {text!r}")


def measure_of(kind: str, group: str) -> tuple[float, str]:
    for prefix, only_group, unit, total in MEASURES:
        if kind.startswith(prefix) and (only_group is None or only_group == group):
            return unit, total
    raise KeyError(f"unknown measure_kind {kind!r}")


def load_models() -> tuple[dict[str, Any], dict[str, str]]:
    data = json.loads(MODELS_FILE.read_text())
    specs = {}
    for entry in data["models"]:
        try:
            spec = get_model(entry["config"], name=entry["name"])
        except FitplanError:  # a model type the spec reader does not know yet: its rows report the error
            continue
        for label in (entry["name"], *entry.get("aliases", ())):
            specs[label] = spec
    return specs, data["registry_names"]


def resolve_model(name: str, specs: dict[str, Any], registry_names: dict[str, str]):
    if name in specs:
        return specs[name]
    return get_model(registry_names.get(name, name))


def tokens_of(row: pd.Series) -> tuple[int, int]:
    """(prompt, new) tokens from the row's notes / seq_len text (rules listed in order)."""
    notes, seq = str(row["notes"]), str(row["seq_len"])
    match = re.search(r"prompt (\d+) \+ (\d+) generated", notes)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = re.search(r"generate (\d+) tokens", notes)
    if match:  # Qwen-1: "context ~1 token" / "short prompt"
        return 1, int(match.group(1))
    match = re.search(r"short prompt \+ (\d+) new", seq)
    if match:  # LitGPT: '~60 (short prompt + 50 new)': the prompt is the rest of the ~total
        total = int(re.match(r"~?(\d+)", seq).group(1))
        new = int(match.group(1))
        return total - new, new
    if seq.isdigit():
        return int(seq), 0
    return 1, 0


@dataclass
class RowResult:
    id: str
    group: str
    mode: str
    measured_gib: float
    estimate_gib: float
    safe_gib: float
    safe_allocated_gib: float
    peak_gib: float
    weights_only_gib: float
    llmfit_gib: float
    note: str = ""


def _baselines(spec, fmt_name: str, prompt: int, new: int, batch: int, gpus: int) -> tuple[float, float]:
    from planner.formats import get_format

    fmt = get_format(fmt_name)
    bits = fmt.bits if fmt.bits else 16
    weights = spec.params.total * bits / 8
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 2 * (prompt + new) * batch
    if spec.architecture == "encoder":
        kv = 0
    return weights / GIB / gpus, (weights + kv + 0.5e9) / GIB / gpus


def evaluate_inference(row: pd.Series, spec, fmt: str, group: str, unit: float, total: str) -> RowResult:
    settings = SETTINGS[group]
    prompt, new = tokens_of(row)
    batch = int(row["batch"]) if not pd.isna(row["batch"]) else 1
    gpu_text = str(row["gpu"])
    gpus = int(re.search(r"x(\d+)", gpu_text).group(1)) if re.search(r"x(\d+)", gpu_text) else 1
    options = dict(settings.options)
    if "flash-attn off" in str(row["notes"]):
        options["attention"] = "eager"
    if gpus > 1:
        options["parallel"] = "pipeline"
    estimate = estimate_memory(spec, fmt, batch=batch, prompt_len=prompt, new_tokens=new, engine=settings.engine,
                               gpus=gpus, gpu=_lookup(GPUS, gpu_text, "GPU"), **options)
    safe, safe_allocated = estimate.safe_gib, estimate.safe_allocated_gib
    peak = estimate.peak_allocated_gib
    if total == "weights":
        point = peak = safe_allocated = estimate.weights_all_devices_gib
    elif total == "device":
        point, peak = estimate.device_total_gib, estimate.device_total_gib
    elif settings.compare != "peak":
        point = estimate.phases_gib[settings.compare]
        safe = estimate.phases_safe_gib[settings.compare]
    else:
        point = peak
    sum_devices = "sum GPUs" in str(row["measure_kind"]) and gpus > 1
    if sum_devices:
        point = peak = estimate.total_all_devices_gib
        safe, safe_allocated = safe * gpus, safe_allocated * gpus
    measured = float(row["measured_gb"]) * unit / GIB
    weights_only, llmfit = _baselines(spec, fmt, prompt, new, batch, 1 if sum_devices else gpus)
    return RowResult(row["id"], group, row["mode"], measured, point, safe, safe_allocated, peak, weights_only,
                     llmfit, note=estimate.peak_phase)


def evaluate_weights_only(row: pd.Series, spec, fmt: str, group: str, unit: float, total: str) -> RowResult:
    """A loaded model without any forward: weights (+ CUDA context and allocator slack on nvidia-smi)."""
    settings = SETTINGS[group]
    estimate = estimate_memory(spec, fmt, seq_len=1, engine=settings.engine,
                               gpu=_lookup(GPUS, str(row["gpu"]), "GPU"), **settings.options)
    load = [t for t in estimate.terms if t.key.startswith("weights") or t.key == "allocator_reserve"
            or t.label.startswith("CUDA context")]
    weights = weight_bytes(spec, fmt, engine=settings.engine).total / GIB
    point = sum(t.gib for t in load) if total == "device" else weights
    upper = sum(t.inputs.get("upper_gib", t.gib) for t in load) if total == "device" else weights
    measured = float(row["measured_gb"]) * unit / GIB
    weights_only, llmfit = _baselines(spec, fmt, 0, 0, 1, 1)
    return RowResult(row["id"], group, row["mode"], measured, point, upper, weights, point, weights_only, llmfit,
                     note="load")


# mode -> evaluator. The training estimator registers its fine-tuning modes here.
EVALUATORS: dict[str, Callable[..., RowResult]] = {
    "inference": evaluate_inference,
    "weights-only": evaluate_weights_only,
    **training_rows.evaluators(RowResult),
}


def evaluate(csv: Path) -> tuple[list[RowResult], list[str]]:
    frame = pd.read_csv(csv)
    specs, registry_names = load_models()
    results, skipped = [], []
    for _, row in frame.iterrows():
        group = row["id"].split("-")[0]
        if row["mode"] not in EVALUATORS:
            skipped.append(f"{row['id']} ({row['mode']}: no evaluator yet)")
            continue
        if str(row["measure_kind"]).startswith("bound_"):
            skipped.append(f"{row['id']} (a fit/OOM bound, not a value)")
            continue
        spec = resolve_model(row["model"], specs, registry_names)
        fmt = _lookup(PRECISIONS, str(row["precision"]), "precision")
        unit, total = measure_of(str(row["measure_kind"]), group)
        results.append(EVALUATORS[row["mode"]](row, spec, fmt, group, unit, total))
    return results, skipped


def _pct(estimate: float, measured: float) -> float:
    return 100.0 * (estimate - measured) / measured


def summarize(results: list[RowResult]) -> pd.DataFrame:
    rows = []
    frame = pd.DataFrame([r.__dict__ for r in results])
    frame["err"] = [_pct(e, m) for e, m in zip(frame.estimate_gib, frame.measured_gib)]
    frame["safe_ratio"] = frame.safe_gib / frame.measured_gib
    frame["safe_alloc_ratio"] = frame.safe_allocated_gib / frame.measured_gib
    frame["err_peak"] = [_pct(e, m) for e, m in zip(frame.peak_gib, frame.measured_gib)]
    frame["err_weights_only"] = [_pct(e, m) for e, m in zip(frame.weights_only_gib, frame.measured_gib)]
    frame["err_llmfit"] = [_pct(e, m) for e, m in zip(frame.llmfit_gib, frame.measured_gib)]
    for group, part in [*frame.groupby("group"), ("ALL", frame)]:
        rows.append({
            "group": group, "rows": len(part),
            "median_abs_err_%": part.err.abs().median(), "p90_abs_err_%": part.err.abs().quantile(0.9),
            "safe_hit_%": 100.0 * (part.safe_ratio >= 1.0).mean(),
            "median_safe/measured": part.safe_ratio.median(),
            "alloc_safe_hit_%": 100.0 * (part.safe_alloc_ratio >= 1.0).mean(),
            "peak_median_%": part.err_peak.abs().median(), "peak_p90_%": part.err_peak.abs().quantile(0.9),
            "weights_only_median_%": part.err_weights_only.abs().median(),
            "weights_only_p90_%": part.err_weights_only.abs().quantile(0.9),
            "weights_only_safe_hit_%": 100.0 * (part.err_weights_only >= 0).mean(),
            "llmfit_median_%": part.err_llmfit.abs().median(), "llmfit_p90_%": part.err_llmfit.abs().quantile(0.9),
            "llmfit_safe_hit_%": 100.0 * (part.err_llmfit >= 0).mean(),
        })
    return pd.DataFrame(rows), frame


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--rows", action="store_true", help="print every row")
    parser.add_argument("--group", help="only rows of this source group (id prefix)")
    parser.add_argument("--markdown", action="store_true", help="also print the README's accuracy table")
    parser.add_argument("--more", type=Path, default=more_rows.MORE_CSV,
                        help="the second published set (fine-tuning and fit/OOM rows)")
    args = parser.parse_args(argv)
    if not args.csv.is_file():
        print(f"calibration CSV not found: {args.csv} (pass --csv)", file=sys.stderr)
        return 2
    results, skipped = evaluate(args.csv)
    if args.group:
        results = [r for r in results if r.group == args.group]
    finetune = [r for r in results if r.mode.startswith("finetune")]
    results = [r for r in results if not r.mode.startswith("finetune")]
    summary, frame = summarize(results)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_columns", 30)
    pd.set_option("display.max_rows", 500)
    if args.rows:
        cols = ["id", "mode", "measured_gib", "estimate_gib", "err", "err_peak", "safe_gib", "safe_ratio",
                "safe_alloc_ratio", "err_weights_only", "err_llmfit", "note"]
        print(frame[cols].round(3).to_string(index=False))
        print()
    print(summary.round(2).to_string(index=False))
    print(f"\nevaluated {len(results)} rows; skipped {len(skipped)} (modes without an evaluator or bounds)")
    print("columns: median/p90 = |point - measured| / measured; safe_hit = safe_gib (device-level bound used for "
          "'fits') >= measured; alloc_safe_hit = the peak-allocated bound >= measured (stricter diagnostic); "
          "peak_* = the run's peak (max over phases) instead of the compared phase")
    for group, settings in SETTINGS.items():
        print(f"  {group}: engine {settings.engine} {settings.options or ''} - {settings.why}")
        if settings.compare != "peak":
            print(f"      compared with phase '{settings.compare}': {settings.compare_why}")
    specs, registry_names = load_models()
    resolve = lambda name: resolve_model(name, specs, registry_names)  # noqa: E731
    first_bounds = training_rows.print_finetune(finetune, pd.read_csv(args.csv), resolve, args.rows)
    if args.more.is_file():
        merged = same_measurements.check_same(pd.read_csv(args.csv), pd.read_csv(args.more))
        print(f"\nSAME MEASUREMENT IN BOTH SETS: {len(merged)} first-set rows are second-set rows transcribed again; "
              "the totals over both sets count each once (the second-set row):")
        for line in merged:
            print(f"  {line}")
        first_values = pd.DataFrame([{"id": r.id, "group": r.group, "mode": r.mode, "measured_gib": r.measured_gib,
                                      "estimate_gib": r.estimate_gib, "safe_gib": r.safe_gib,
                                      "rule16_gib": r.weights_only_gib, "factory_gib": r.llmfit_gib} for r in finetune])
        values, bounds = more_rows.print_more(resolve, first_bounds, args.rows, args.more, first_values)
        if args.markdown:
            print("\n" + markdown_table(summary, training_rows.summarize_finetune(
                pd.DataFrame([r.__dict__ for r in finetune]))[0], values, bounds))
    return 0


def _row(label: str, part: pd.Series, safe: str, first: str, second: str) -> str:
    return (f"| {label} | {part['median_abs_err_%']:.1f}% / {part['p90_abs_err_%']:.1f}% | {safe} | {first} | "
            f"{second} |")


def markdown_table(inference: pd.DataFrame, finetune: pd.DataFrame, more: pd.DataFrame | None,
                   bounds: pd.DataFrame) -> str:
    """The README's accuracy table, from this run's summaries (``--markdown``)."""
    inf, ft = inference.iloc[-1], finetune.iloc[-1]
    lines = ["| rows | fitplan median / p90 error | safe bound holds | weights-only (Accelerate) or 16 B/param "
             "median | llmfit or LLaMA-Factory table median |", "|---|---|---|---|---|",
             _row(f"{int(inf['rows'])} inference", inf,
                  f"{inf['safe_hit_%']:.1f}% (median safe/measured {inf['median_safe/measured']:.2f})",
                  f"{inf['weights_only_median_%']:.1f}%", f"{inf['llmfit_median_%']:.1f}%"),
             _row(f"{int(ft['rows'])} fine-tuning (first set)", ft, f"{ft['safe_hit_%']:.1f}%",
                  f"{ft['16B/param_median_%']:.1f}%", f"{ft['LLaMA-Factory_median_%']:.1f}%")]
    if more is not None:
        for label, name in (("fine-tuning (second set)", "ALL new fine-tuning"),
                            ("fine-tuning (both sets, each published measurement once)", "ALL fine-tuning, both sets"),
                            ("fine-tuning (both sets as transcribed: 7 measurements counted twice)",
                             "  (as transcribed: merged rows counted twice)"),
                            ("fine-tuning, without the flagged rows (diagnostic)",
                             "  (diagnostic) without flagged rows")):
            part = more[more.group == name].iloc[0]
            lines.append(_row(f"{int(part['rows'])} {label}", part, f"{part['safe_hit_%']:.1f}%",
                              f"{part['16B/param_median_%']:.1f}%", f"{part['LLaMA-Factory_median_%']:.1f}%"))
    for label, name in (("fit/OOM outcomes (each published outcome once)", "ALL fit/OOM"),
                        ("fit/OOM outcomes as transcribed (6 counted twice)", "  (as transcribed: merged rows counted twice)"),
                        ("fit/OOM outcomes, without the flagged rows (diagnostic)", "  (diagnostic) without flagged rows")):
        total = bounds[bounds.group == name].iloc[0]
        lines.append(f"| {int(total['rows'])} {label} | point estimate on the published side: "
                     f"{total['point_right_%']:.1f}% | {total['safe_right_%']:.1f}% | - | - |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
