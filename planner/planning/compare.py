"""``compare_formats``: the seed lab's quantization comparison (FP16 / INT8 / INT4 on one GPU type).

For each weight format: memory of the whole model (one GPU), GPUs of the given type needed, memory
utilization of each of them, $/h and purchase price of those GPUs, decode tokens/s on them and the
predicted quality retained. Every figure comes from the planner's candidate evaluation (the same
estimator and accuracy model as ``planner.plan``). Default workload: the seed's inference scenario,
batch 8 x 2048 tokens, transformers with bitsandbytes (INT8 = LLM.int8, INT4 = NF4, as the seed loads them).
"""

from __future__ import annotations

from typing import Any

SEED_FORMATS: tuple[str, ...] = ("fp16", "int8", "nf4")
SEED_BATCH = 8
SEED_CONTEXT = 2048

# Columns of the returned DataFrame.
COMPARE_COLUMNS: dict[str, str] = {
    "format": "weight format",
    "memory_gib": "memory of the whole model on one GPU (safe bound), GiB",
    "gpus_needed": "GPUs of this type one copy needs (0: more than 16)",
    "utilization_pct": "memory used per GPU at gpus_needed, % of its usable capacity",
    "usd_per_hour": "cloud $/h of those GPUs",
    "purchase_usd": "launch price of those GPUs",
    "tokens_per_s": "decode tokens/s of the batch on those GPUs",
    "retained_pct": "predicted quality retained, %",
    "retained_low_pct": "80% interval, low",
    "retained_high_pct": "80% interval, high",
    "basis": "prior, profile or calibrated",
    "note": "why the format cannot run here ('' when it can)",
}


def compare_formats(model: Any, gpu: str, formats: tuple[str, ...] | list[str] = SEED_FORMATS, *,
                    batch: int = SEED_BATCH, context: int = SEED_CONTEXT, engine: str = "hf", profile: Any = None,
                    calibration: Any = None):
    """A DataFrame with :data:`COMPARE_COLUMNS`, one row per format (in the order given)."""
    import pandas as pd

    from planner.formats import get_format
    from planner.models.resolve import get_model
    from planner.planning.candidate import Evaluator
    from planner.planning.constraints import Constraints
    from planner.speed import purchase_usd
    from planner.strategy import CompressionStrategy, QuantizationSpec

    spec = get_model(model)
    constraints = Constraints(gpu=gpu, batch=batch, context=context, engine=engine)
    evaluator = Evaluator(spec, constraints, profile=profile, calibration=calibration)
    acc = constraints.gpu_accelerator()
    rows = []
    for name in formats:
        fmt = get_format(name)
        compute = fmt.compute_dtype if fmt.family == "float" else evaluator.baseline_format
        strategy = (CompressionStrategy() if fmt.name == evaluator.baseline_format else
                    CompressionStrategy(quantization=QuantizationSpec(weights=fmt.name, compute_dtype=compute)))
        candidate = evaluator.evaluate(strategy)
        needed = candidate.gpus_needed
        per_gpu = candidate.memory_gib
        if needed > 1:
            spread = Evaluator(spec, constraints.model_copy(update={"gpus": needed}), profile=profile,
                               calibration=calibration).evaluate(strategy)
            per_gpu = spread.memory_gib
        quality = candidate.quality
        rows.append({
            "format": fmt.name, "memory_gib": candidate.memory_gib, "gpus_needed": needed,
            "utilization_pct": 100.0 * per_gpu / acc.memory_usable_gib if needed and per_gpu is not None else None,
            "usd_per_hour": candidate.usd_per_hour if needed else None,
            "purchase_usd": purchase_usd(acc, needed) if needed else None,
            "tokens_per_s": candidate.tokens_per_s if needed else None,
            "retained_pct": quality.retained_pct, "retained_low_pct": quality.low_pct,
            "retained_high_pct": quality.high_pct, "basis": quality.basis,
            "note": "; ".join(v.message for v in candidate.violations if v.constraint == "hardware"),
        })
    frame = pd.DataFrame(rows)
    return frame[list(COMPARE_COLUMNS)].astype({"utilization_pct": float, "usd_per_hour": float,
                                                "purchase_usd": float, "tokens_per_s": float})
