"""Fine-tuning versions of ``what_fits`` and ``size_cluster`` (the seed lab's training-mode
``calculate_minimum_gpus``), reached through ``planner.what_fits(..., mode=...)`` and
``planner.size_cluster(..., mode=...)``.

Each (model, precision) is prepared once without a GPU (memory does not depend on the GPU beyond the
cuBLAS workspace); every GPU is then checked for support (bf16 compute, the format) and compared with
the safe bound. Largest batch / longest sequence re-evaluate the same terms at other sizes (a few
constants taken at the requested size, such as LitGPT's per-chunk lm_head copies and allocator
segments, are kept as they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hardware_db import Accelerator
from planner.errors import FitplanError, UnsupportedError
from planner.formats import get_format
from planner.memory.phases import peak_phase, phase_totals, safe_bytes
from planner.memory.training.catalog import load_catalog
from planner.memory.training.setup import PreparedTraining, check_gpu, prepare_training
from planner.memory.training.terms import PHASES
from planner.memory.training.throughput import training_flops_per_token
from planner.models.resolve import get_model

GIB = 2**30
MAX_SEARCH_BATCH = 4096
MAX_GPUS = 4096
DEFAULT_PRECISIONS: dict[str, tuple[str, ...]] = {
    "qlora": ("nf4", "nf4-dq"), "lora": ("bf16",), "full": ("bf16",), "freeze": ("bf16",)}
DEFAULT_SHARDING = "zero3"

FITS_COLUMNS: dict[str, str] = {
    "gpu": "accelerator name",
    "model": "model name",
    "params_b": "total parameters, billions",
    "precision": "format the model is loaded in (the frozen base for LoRA/QLoRA)",
    "mode": "fine-tuning mode",
    "supported": "the GPU runs this recipe and format: True, False, or <NA> when unknown (capacity-only device)",
    "fits": "safe_gib <= usable_gib and the recipe/format is not unsupported",
    "safe_gib": "upper bound of the per-GPU memory of one step at this sequence length and micro-batch",
    "peak_gib": "expected torch.cuda.max_memory_allocated of one step",
    "usable_gib": "memory a framework can allocate on the GPU",
    "headroom_gib": "usable_gib - safe_gib",
    "headroom_pct": "headroom as % of usable_gib",
    "max_seq_len": "longest training sequence that fits at this micro-batch (capped at the model's maximum)",
    "max_batch": "largest micro-batch that fits at this sequence length",
    "train_tok_s": "training tokens/s of one GPU at the default MFU (NaN when its TFLOPS are unknown)",
    "note": "why a row cannot run, or a caveat",
}

CLUSTER_COLUMNS: dict[str, str] = {
    "gpu": "accelerator name",
    "usable_gib": "memory a framework can allocate per GPU",
    "supported": "the GPU runs this recipe and format (False: see note)",
    "gpus": "fewest GPUs whose per-GPU safe bound fits (NaN: none up to the search limit)",
    "sharding": "data-parallel layout of the model states",
    "per_gpu_safe_gib": "upper bound of the memory of one GPU",
    "memory_utilization_pct": "per_gpu_safe_gib as % of usable_gib",
    "train_tok_s": "training tokens/s of all GPUs at the default MFU",
    "usd_per_hour": "cloud on-demand price of all GPUs (NaN: no price in the catalog)",
    "purchase_usd": "launch price of all GPUs (NaN: unknown)",
    "hours": "wall-clock hours for training_tokens (NaN without training_tokens or speed)",
    "usd_total": "usd_per_hour x hours",
    "note": "why a GPU cannot be used, or a caveat",
}


def _safe(prepared: PreparedTraining, batch: int, seq_len: int) -> float:
    return safe_bytes(phase_totals(prepared.raw, list(PHASES), batch=batch, prompt=seq_len, total=seq_len, window=None))


def _largest(fits, low: int, high: int) -> int:
    """Largest n in [low, high] with fits(n) (fits is monotone: true then false); low - 1 when none."""
    if not fits(low):
        return low - 1
    step = low
    while step * 2 <= high and fits(step * 2):
        step *= 2
    lo, hi = step, min(high, step * 2)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _tokens_per_second(prepared: PreparedTraining, acc: Accelerator, gpus: int) -> float:
    peak = None if acc.is_generic else acc.peak_tflops(prepared.recipe.compute_dtype)
    if not peak:
        return float("nan")
    flops = training_flops_per_token(prepared.spec, prepared.plan, prepared.seq_len, prepared.options.grad_checkpointing)
    mfu = prepared.options.mfu or load_catalog().throughput.mfu
    return gpus * peak * 1e12 * mfu / flops.per_token


def _support(prepared: PreparedTraining, acc: Accelerator) -> tuple[bool | None, str]:
    if acc.is_generic:
        return None, "capacity-only device: bf16 and format support unknown"
    try:
        check_gpu(prepared.recipe, prepared.fmt, acc)
    except UnsupportedError as error:
        return False, str(error)
    return True, ""


def training_what_fits(gpus: Sequence[Accelerator], models: Sequence[str], precisions: Sequence[str] | None, *,
                       seq_len: int, batch: int, mode: str, **training: Any) -> pd.DataFrame:
    """One row per (GPU, model, precision) for a fine-tuning step (columns ``FITS_COLUMNS``)."""
    formats = tuple(dict.fromkeys(get_format(p).name for p in (precisions or DEFAULT_PRECISIONS[mode])))
    rows = []
    for name in models:
        spec = get_model(name)
        for fmt_name in formats:
            try:
                prepared = prepare_training(spec, get_format(fmt_name), mode, batch=batch, seq_len=seq_len, **training)
            except FitplanError as error:
                rows += [_error_row(acc, spec, fmt_name, mode, str(error)) for acc in gpus]
                continue
            rows += [_fit_row(prepared, acc) for acc in gpus]
    frame = pd.DataFrame(rows, columns=list(FITS_COLUMNS))
    frame["_order"] = [[acc.name for acc in gpus].index(g) for g in frame["gpu"]]
    frame = frame.sort_values(["_order", "fits", "params_b", "safe_gib"], ascending=[True, False, False, False],
                              kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def _error_row(acc: Accelerator, spec, fmt_name: str, mode: str, reason: str) -> dict[str, Any]:
    row = dict.fromkeys(FITS_COLUMNS, np.nan)
    row.update(gpu=acc.name, model=spec.name, params_b=spec.params.total / 1e9, precision=fmt_name, mode=mode,
               supported=False, fits=False, usable_gib=acc.memory_usable_gib, max_seq_len=0, max_batch=0, note=reason)
    return row


def _fit_row(prepared: PreparedTraining, acc: Accelerator) -> dict[str, Any]:
    spec, batch, seq = prepared.spec, prepared.batch, prepared.seq_len
    usable = acc.memory_usable_gib * GIB
    supported, note = _support(prepared, acc)
    totals = phase_totals(prepared.raw, list(PHASES), batch=batch, prompt=seq, total=seq, window=None)
    safe = safe_bytes(totals)
    ok = supported is not False
    fits = ok and safe <= usable
    limit = spec.max_position_embeddings or 1_000_000
    max_seq = _largest(lambda s: _safe(prepared, batch, s) <= usable, 1, limit) if ok else 0
    max_batch = _largest(lambda b: _safe(prepared, b, seq) <= usable, 1, MAX_SEARCH_BATCH) if ok else 0
    if prepared.warnings and not note:
        note = prepared.warnings[0]
    return {"gpu": acc.name, "model": spec.name, "params_b": spec.params.total / 1e9, "precision": prepared.fmt.name,
            "mode": prepared.mode, "supported": supported, "fits": fits, "safe_gib": safe / GIB,
            "peak_gib": peak_phase(totals).allocated / GIB, "usable_gib": usable / GIB,
            "headroom_gib": (usable - safe) / GIB, "headroom_pct": 100 * (usable - safe) / usable,
            "max_seq_len": max_seq, "max_batch": max_batch,
            "train_tok_s": _tokens_per_second(prepared, acc, 1) if fits else np.nan, "note": note}


def training_size_cluster(model: Any, precision: str, accs: Sequence[Accelerator], *, batch: int, seq_len: int,
                          mode: str, sharding: str | None = None, **training: Any) -> pd.DataFrame:
    """Fewest GPUs of each type for one fine-tuning step (columns ``CLUSTER_COLUMNS``)."""
    from planner.speed.cost import purchase_usd, usd_per_hour

    spec, fmt = get_model(model), get_format(precision)
    sharding = sharding or DEFAULT_SHARDING
    cache: dict[int, PreparedTraining | FitplanError] = {}

    def prepared_for(n: int) -> PreparedTraining | FitplanError:
        if n not in cache:
            try:
                cache[n] = prepare_training(spec, fmt, mode, batch=batch, seq_len=seq_len, gpus=n,
                                            sharding=sharding, **training)
            except FitplanError as error:
                cache[n] = error
        return cache[n]

    base = prepared_for(1)
    if isinstance(base, FitplanError):
        raise base
    tokens = training.get("training_tokens")
    rows = []
    for acc in accs:
        row = dict.fromkeys(CLUSTER_COLUMNS, np.nan)
        row.update(gpu=acc.name, usable_gib=acc.memory_usable_gib, sharding=sharding, note="")
        supported, note = _support(base, acc)
        row["supported"] = supported is not False
        if supported is False:
            row["note"] = note
            rows.append(row)
            continue
        usable = acc.memory_usable_gib * GIB

        def fits(n: int) -> bool:
            prepared = prepared_for(n)
            return not isinstance(prepared, FitplanError) and _safe(prepared, batch, seq_len) <= usable
        scales = sharding in ("zero3", "fsdp")
        n = _smallest(fits, MAX_GPUS if scales else 1)
        if n is None:
            row["note"] = (f"does not fit on {MAX_GPUS} GPUs" if scales else
                           f"{sharding} keeps a full replica per GPU: one GPU must hold it (try sharding='zero3')")
            rows.append(row)
            continue
        prepared = prepared_for(n)
        safe = _safe(prepared, batch, seq_len)
        speed = _tokens_per_second(prepared, acc, n)
        hourly = usd_per_hour(acc, n)
        hours = tokens / speed / 3600 if tokens and np.isfinite(speed) else np.nan
        row.update(gpus=n, per_gpu_safe_gib=safe / GIB, memory_utilization_pct=100 * safe / usable,
                   train_tok_s=speed, usd_per_hour=hourly, purchase_usd=purchase_usd(acc, n), hours=hours,
                   usd_total=hourly * hours if hourly is not None and np.isfinite(hours) else np.nan,
                   note=note or ("no cloud price" if acc.cloud_usd_per_hour is None else ""))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(CLUSTER_COLUMNS))
    frame["_usable"] = frame["gpus"].notna()
    frame = frame.sort_values(["_usable", "gpus", "usd_per_hour", "gpu"], ascending=[False, True, True, True],
                              na_position="last", kind="stable")
    return frame.drop(columns="_usable").reset_index(drop=True)


def _smallest(fits, high: int) -> int | None:
    """Smallest n in [1, high] with fits(n), for fits monotone (false then true); None when none."""
    n = 1
    while n < high and not fits(n):
        n *= 2
    n = min(n, high)
    if not fits(n):
        return None
    lo, hi = n // 2 + 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi
