"""Accuracy of the speed model against published measurements, and the fit of its constants.

    python benchmarks/speed_accuracy.py          # error tables: all rows and leave-one-source-out
    python benchmarks/speed_accuracy.py --fit    # refit on all rows and write planner/data/speed_calibration.toml

Rows: ``benchmarks/data/published_speed_rows.csv`` (published values with their source and locator,
mapped to fitplan names by ``benchmarks/data/build_speed_rows.py``). Every prediction goes through the
library's formula (``planner.speed.step.step_terms``, the one ``planner.estimate`` uses; the script checks
that its vectorised evaluation equals ``planner.speed.model.speed_of`` row by row).

Fit: per engine, the constants of engines.toml ``[speed.<engine>]`` and the kernel factor of each
quantized format with rows, by least squares on ``log(predicted / published)``; each row weighs
``1 / sqrt(rows of its source)`` so one large source does not decide alone, and a ridge term
``0.5 x log(value / prior)`` keeps constants the data cannot pin down at their sourced priors.
Leave-one-source-out: each source is predicted with constants fitted without it (the honest figure).
Error = |predicted / published - 1|; the tables give the median, the 90th percentile and the share
within +-30% per engine and per source.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hardware_db  # noqa: E402
from planner.formats import get_format  # noqa: E402
from planner.memory.api import prepare_inference  # noqa: E402
from planner.speed.engines import EngineSpeed, get_speed_engine, prior_speed_engines  # noqa: E402
from planner.speed.model import speed_of  # noqa: E402
from planner.speed.step import matmul_peak, step_terms  # noqa: E402

ROWS = ROOT / "benchmarks" / "data" / "published_speed_rows.csv"
CALIBRATION = ROOT / "planner" / "data" / "speed_calibration.toml"
BOUNDS = {"bandwidth_efficiency": (0.2, 1.0), "step_overhead_ms": (0.01, 60.0), "layer_overhead_us": (0.1, 3000.0),
          "prefill_mfu": (0.05, 1.0), "decode_mfu": (0.05, 1.0), "multi_gpu_efficiency": (0.3, 1.0),
          "vector_share": (1e-4, 0.5),
          "expert_overhead_us": (1.0, 3000.0)}
KERNEL_BOUNDS = (0.1, 1.5)
RIDGE = 0.1
MIN_KERNEL_ROWS = 3
MIN_SUPPORT_ROWS = 5
MIN_SOURCES = 2
ROWS_PER_CONSTANT = 3
LLMFIT_EFFICIENCY = 0.55  # llmfit how-it-works: tok/s = bandwidth / model bytes x 0.55


@dataclass
class Work:
    """The per-row inputs of the step formula (decode step and prefill), fixed by the row."""

    frame: pd.DataFrame
    dec: dict[str, np.ndarray]
    pre: dict[str, np.ndarray]
    prepared: list

    def subset(self, mask: np.ndarray) -> Work:
        return Work(self.frame[mask].reset_index(drop=True), {k: v[mask] for k, v in self.dec.items()},
                    {k: v[mask] for k, v in self.pre.items()}, [p for p, m in zip(self.prepared, mask) if m])


def load_work() -> Work:
    frame = pd.read_csv(ROWS)
    dec = {k: [] for k in ("weight_bytes", "kv_bytes", "linear_flops", "attention_flops", "layers", "experts",
                           "bandwidth", "peak", "vector", "devices")}
    pre = {k: [] for k in dec}
    prepared = []
    for row in frame.itertuples(index=False):
        engine = get_speed_engine(row.fp_engine)
        split = (row.fp_gpus, 1) if row.fp_parallel == "tensor" else (1, row.fp_gpus)
        p = prepare_inference(row.fp_model, row.fp_precision, batch=int(row.fp_batch), prompt_len=int(row.fp_prompt),
                              new_tokens=int(row.fp_new), engine=engine.memory_engine,
                              kv_dtype=row.fp_kv_dtype if isinstance(row.fp_kv_dtype, str) else None,
                              check_support=False, split=split)
        acc = hardware_db.get(row.fp_gpu)
        prepared.append((p, acc))
        s = speed_of(p, engine, acc)
        for store, step in ((dec, s.decode), (pre, s.prefill)):
            for key in ("weight_bytes", "kv_bytes", "linear_flops", "attention_flops", "layers"):
                store[key].append(step.inputs[key] if step else np.nan)
            store["experts"].append(step.inputs.get("experts_run", 0.0) if step else 0.0)
            store["bandwidth"].append(acc.memory_bandwidth_gbps)
            store["peak"].append(matmul_peak(engine, acc, get_format(row.fp_precision).matmul_dtype) or np.nan)
            store["vector"].append(acc.fp32_tflops or np.nan)
            store["devices"].append(split[0])
    return Work(frame, {k: np.array(v, dtype=float) for k, v in dec.items()},
                {k: np.array(v, dtype=float) for k, v in pre.items()}, prepared)


def _fitted_names(engine: EngineSpeed, frame: pd.DataFrame | None = None) -> list[str]:
    """The constants a fit may move: those at least MIN_SUPPORT_ROWS rows of ``frame`` depend on."""
    names = [n for n in BOUNDS if n != "expert_overhead_us" or engine.expert_loop]
    if frame is None:
        return names
    compute = frame.fp_measure.isin(["prefill_tok_s", "ttft_ms", "throughput_per_gpu"])
    support = {"prefill_mfu": frame.fp_measure.isin(["prefill_tok_s", "ttft_ms"]).sum(),
               "decode_mfu": ((frame.fp_batch >= 16) & ~frame.fp_measure.isin(["prefill_tok_s", "ttft_ms"])).sum(),
               "vector_share": compute.sum(),
               "multi_gpu_efficiency": ((frame.fp_gpus > 1) & (frame.fp_parallel == "tensor")).sum(),
               "expert_overhead_us": frame.fp_model.str.contains("Mixtral|MoE|A3B|A22B|DeepSeek-V").sum()}
    return [n for n in names if support.get(n, len(frame)) >= MIN_SUPPORT_ROWS]


def predict(work: Work, engine: EngineSpeed) -> np.ndarray:
    """Published-unit predictions of ``work``'s rows (all of one engine) with ``engine``'s constants."""
    f = work.frame
    fmts = [get_format(p) for p in f.fp_precision]
    kernel = np.array([engine.kernel_factor(fmt)[0] for fmt in fmts])
    compute = np.array([engine.compute_factor(fmt)[0] for fmt in fmts])

    def seconds(w: dict[str, np.ndarray], mfu: float, kernel_factor) -> np.ndarray:
        return step_terms(engine, weight_bytes=w["weight_bytes"], kv_bytes=w["kv_bytes"], linear_flops=w["linear_flops"],
                          attention_flops=w["attention_flops"], bandwidth_gbps=w["bandwidth"], peak_tflops=w["peak"],
                          vector_tflops=w["vector"], mfu=mfu, kernel_factor=kernel_factor, compute_factor=compute,
                          layers=w["layers"], experts_run=w["experts"], devices=w["devices"])[3]

    dec_s = seconds(work.dec, engine.decode_mfu, kernel)
    pre_s = seconds(work.pre, engine.prefill_mfu, 1.0)
    batch, prompt, new, gpus = (f[c].to_numpy(float) for c in ("fp_batch", "fp_prompt", "fp_new", "fp_gpus"))
    generation = np.nan_to_num(pre_s) + new * dec_s
    with_prefill = f.notes.fillna("").str.contains("incl. prefill|including prefill|end-to-end", case=False).to_numpy()
    decode = np.where(with_prefill, batch * new / generation, batch / dec_s)
    return np.select([f.fp_measure == "decode_tok_s", f.fp_measure == "prefill_tok_s", f.fp_measure == "per_token_ms",
                      f.fp_measure == "ttft_ms", f.fp_measure == "throughput_per_gpu"],
                     [decode, batch * prompt / pre_s, dec_s * 1e3, pre_s * 1e3, batch * new / generation / gpus],
                     np.nan)


def fit_engine(work: Work, prior: EngineSpeed) -> EngineSpeed:
    """Least-squares fit of ``prior``'s constants (and kernel factors) on ``work`` (rows of one engine)."""
    names = _fitted_names(prior, work.frame)
    counts = work.frame.fp_precision.value_counts()
    # kernel factors of quantized formats with rows; a format whose prior is the engine's reference
    # (factor 1, e.g. GGUF F16 in llama.cpp) stays the reference the bandwidth efficiency is fitted on
    kernels = [fmt for fmt, n in counts.items() if n >= MIN_KERNEL_ROWS and get_format(fmt).family != "float"
               and "reference" not in prior.prior_kernel_factor(get_format(fmt))[1]]
    # compute factors for formats seen in compute-bound rows (prefill, TTFT, large-batch throughput)
    compute_rows = work.frame[work.frame.fp_measure.isin(["prefill_tok_s", "ttft_ms", "throughput_per_gpu"])]
    computes = [fmt for fmt, n in compute_rows.fp_precision.value_counts().items()
                if n >= MIN_KERNEL_ROWS and compute_rows.fp_precision.nunique() > 1]
    start = ([getattr(prior, n) for n in names] + [prior.prior_kernel_factor(get_format(k))[0] for k in kernels]
             + [1.0] * len(computes))
    lower = [BOUNDS[n][0] for n in names] + [KERNEL_BOUNDS[0]] * (len(kernels) + len(computes))
    upper = [BOUNDS[n][1] for n in names] + [KERNEL_BOUNDS[1]] * (len(kernels) + len(computes))
    if len(work.frame) < ROWS_PER_CONSTANT * len(start):
        return prior  # too few rows to pin this many constants: the sourced priors predict better
    start = np.clip(start, lower, upper)
    source_rows = work.frame.source.map(work.frame.source.value_counts()).to_numpy(float)
    weight = 1.0 / np.sqrt(source_rows)
    published = work.frame.fp_value.to_numpy(float)

    def engine_at(x) -> EngineSpeed:
        n, k = len(names), len(kernels)
        return prior.model_copy(update={**dict(zip(names, x[:n])), "kernels": dict(zip(kernels, x[n:n + k])),
                                        "compute_kernels": dict(zip(computes, x[n + k:]))})

    def residuals(x):
        pred = predict(work, engine_at(x))
        err = np.where(np.isfinite(pred) & (pred > 0), np.log(np.abs(pred) / published), 3.0)
        return np.concatenate([weight * err, RIDGE * np.log(np.asarray(x) / start)])

    if len(work.frame) == 0:
        return prior
    result = least_squares(residuals, start, bounds=(lower, upper), x_scale="jac")
    return engine_at(result.x)


def errors(work: Work, engine_for) -> pd.DataFrame:
    """Rows with predicted and published values; ``engine_for(engine name, rows mask)`` gives constants."""
    out = []
    for name in work.frame.fp_engine.unique():
        mask = (work.frame.fp_engine == name).to_numpy()
        sub = work.subset(mask)
        out.append(sub.frame.assign(predicted=engine_for(name, sub)))
    frame = pd.concat(out, ignore_index=True)
    frame["abs_pct_error"] = 100 * (frame.predicted / frame.fp_value - 1).abs()
    return frame


def summary(frame: pd.DataFrame, by: str) -> pd.DataFrame:
    g = frame.groupby(by)["abs_pct_error"]
    table = pd.DataFrame({"rows": g.size(), "median_%": g.median(), "p90_%": g.quantile(0.9),
                          "within_30%": g.apply(lambda e: 100 * (e <= 30).mean())})
    return table.round(1).sort_values("rows", ascending=False)


def fitted_engines(work: Work) -> dict[str, EngineSpeed]:
    """Constants fitted on all rows, for engines with rows from at least MIN_SOURCES sources (an engine
    seen by one source only keeps its priors: one benchmark setup is not a calibration)."""
    priors = prior_speed_engines()
    engines = {}
    for name in work.frame.fp_engine.unique():
        sub = work.subset((work.frame.fp_engine == name).to_numpy())
        engines[name] = fit_engine(sub, priors[name]) if sub.frame.source.nunique() >= MIN_SOURCES else priors[name]
    return engines


def leave_one_source_out(work: Work) -> pd.DataFrame:
    priors = prior_speed_engines()

    def engine_for(name: str, sub: Work) -> np.ndarray:
        predicted = np.full(len(sub.frame), np.nan)
        for source in sub.frame.source.unique():
            held = (sub.frame.source == source).to_numpy()
            engine = fit_engine(sub.subset(~held), priors[name])
            predicted[held] = predict(sub.subset(held), engine)
        return predicted
    return errors(work, engine_for)


def check_one_formula(work: Work, engines: dict[str, EngineSpeed], sample: int = 25) -> float:
    """Largest relative gap between the vectorised predictions and planner's speed_of on sampled rows."""
    gap = 0.0
    rng = np.random.default_rng(0)
    for i in rng.choice(len(work.frame), size=min(sample, len(work.frame)), replace=False):
        row = work.frame.iloc[i]
        if row.fp_measure != "prefill_tok_s":
            continue
        p, acc = work.prepared[i]
        s = speed_of(p, engines[row.fp_engine], acc)
        vector = predict(work.subset(np.arange(len(work.frame)) == i), engines[row.fp_engine])[0]
        gap = max(gap, abs(s.prefill_tokens_per_s / vector - 1))
    return gap


def write_calibration(engines: dict[str, EngineSpeed], work: Work) -> None:
    lines = [CALIBRATION.read_text().split("schema_version")[0].rstrip() + "\nschema_version = 1\n"]
    for name, engine in engines.items():
        if engine == prior_speed_engines()[name]:
            continue
        rows = work.frame[work.frame.fp_engine == name].id.tolist()
        lines.append(f"\n[engines.{name}]")
        for field in _fitted_names(engine, work.frame[work.frame.fp_engine == name]):
            lines.append(f"{field} = {float(f'{getattr(engine, field):.4g}')}")
        lines.append("rows = [" + ", ".join(f'"{r}"' for r in rows) + "]")
        for table in ("kernels", "compute_kernels"):
            values = getattr(engine, table)
            if values:
                lines.append(f"\n[engines.{name}.{table}]")
                lines += [f'"{fmt}" = {float(f"{v:.4g}")}' for fmt, v in values.items()]
    CALIBRATION.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="refit on all rows and write speed_calibration.toml")
    args = parser.parse_args()
    pd.set_option("display.width", 120)
    work = load_work()
    print(f"{len(work.frame)} published rows, {work.frame.source.nunique()} sources, "
          f"{work.frame.fp_engine.nunique()} engines ({ROWS.relative_to(ROOT)})")
    priors = prior_speed_engines()
    prior_errors = errors(work, lambda name, sub: predict(sub, priors[name]))
    engines = fitted_engines(work)
    if args.fit:
        write_calibration(engines, work)
        print(f"wrote {CALIBRATION.relative_to(ROOT)}")
    gap = check_one_formula(work, engines)
    print(f"vectorised fit formula vs planner speed_of on sampled rows: largest gap {gap:.1e}")
    fitted = errors(work, lambda name, sub: predict(sub, engines[name]))
    loso = leave_one_source_out(work)
    for title, frame in (("priors only (engines.toml, no fit)", prior_errors), ("fitted on all rows", fitted),
                         ("leave-one-source-out (each source predicted by constants fitted without it)", loso)):
        print(f"\n== {title}: |predicted/published - 1| in %")
        print(summary(frame, "fp_engine").to_string())
        if title.startswith("leave"):
            print(summary(frame, "source").to_string())
            print(summary(frame, "fp_measure").to_string())
    decode = loso[(loso.fp_measure == "decode_tok_s") & (loso.fp_batch == 1)].copy()
    rows = work.frame.reset_index().merge(decode[["id"]], on="id")["index"].to_numpy()
    bandwidth, weights = work.dec["bandwidth"][rows], work.dec["weight_bytes"][rows]
    decode["llmfit"] = 100 * (bandwidth * 1e9 * LLMFIT_EFFICIENCY / weights / decode.fp_value.to_numpy() - 1).__abs__()
    print(f"\nbatch-1 decode rows ({len(decode)}): one constant per backend (llmfit: bandwidth / weight bytes x "
          f"{LLMFIT_EFFICIENCY}) vs this model (leave-one-source-out)")
    print(pd.DataFrame({"llmfit median_%": decode.groupby("fp_engine").llmfit.median(),
                        "llmfit within_30%": decode.groupby("fp_engine").llmfit.apply(lambda e: 100 * (e <= 30).mean()),
                        "fitplan median_%": decode.groupby("fp_engine").abs_pct_error.median(),
                        "fitplan within_30%": decode.groupby("fp_engine").abs_pct_error.apply(
                            lambda e: 100 * (e <= 30).mean())}).round(1).to_string())
    target = summary(loso, "fp_engine")
    target = target[target.rows >= 20]
    met = (target["median_%"] <= 25) & (target["within_30%"] >= 65)
    print("\nLOSO target (median <= 25% and >= 65% within +-30%, engines with >= 20 rows): "
          + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in met.items()))
    print("\nfitted constants:")
    for name, engine in engines.items():
        consts = ", ".join(f"{n}={getattr(engine, n):.3g}" for n in _fitted_names(engine))
        kernels = ", ".join(f"{k}={v:.2f}" for k, v in engine.kernels.items())
        computes = ", ".join(f"{k}={v:.2f}" for k, v in engine.compute_kernels.items())
        print(f"  {name}: {consts}" + (f"; kernels {kernels}" if kernels else "")
              + (f"; compute factors {computes}" if computes else ""))


if __name__ == "__main__":
    main()
