"""``size_cluster``: the fewest GPUs of each catalog type that hold a model, and what they cost.

For every accelerator: tensor parallel first (the size must divide the attention heads, and divide or
be a multiple of the KV heads, and stay within ``gpus_per_node``); when the largest such size inside
a node is not enough, pipeline stages of that size are added (up to one stage per layer). A GPU is
enough when the per-device safe bound fits its usable memory. Formats the GPU cannot run are listed
with the reason. This is the seed lab's ``calculate_minimum_gpus`` with real per-device memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hardware_db import Accelerator
from planner.errors import FitplanError, InvalidRequestError
from planner.formats import get_format
from planner.memory.api import MAX_BATCH, MAX_TOKENS, PreparedInference, _positive_int, prepare_inference
from planner.memory.devices import format_support
from planner.memory.engines import get_engine
from planner.memory.parallel import check_tensor_parallel
from planner.memory.phases import phase_totals, safe_bytes
from planner.models.resolve import get_model
from planner.speed.cost import estimate_cost
from planner.speed.engines import get_speed_engine
from planner.speed.model import SpeedUnknown, speed_of

GIB = 2**30
MAX_PIPELINE_STAGES = 64

COLUMNS: dict[str, str] = {
    "gpu": "accelerator name",
    "usable_gib": "memory a framework can allocate per GPU",
    "supported": "the GPU runs this format with this engine (False: see note)",
    "gpus": "fewest GPUs that hold the model at this batch and sequence length (NaN: none found)",
    "tp": "tensor-parallel size (within one node)",
    "pp": "pipeline stages",
    "per_gpu_safe_gib": "upper bound of the memory on the most loaded GPU",
    "memory_utilization_pct": "per_gpu_safe_gib as % of usable_gib",
    "decode_tok_s": "decode tokens/s of the whole batch (planner.speed; NaN when the bandwidth is unknown)",
    "prefill_tok_s": "prefill tokens/s of a seq_len prompt (NaN when the TFLOPS of the matmul dtype are unknown)",
    "usd_per_hour": "cloud on-demand price of all GPUs (NaN: no price in the catalog)",
    "purchase_usd": "launch price of all GPUs (NaN: unknown)",
    "usd_per_million_tokens": "usd_per_hour / (decode_tok_s x 3600) x 1e6",
    "note": "why a GPU cannot be used, or a caveat",
}


def tensor_parallel_sizes(spec, limit: int) -> list[int]:
    """Valid tensor-parallel sizes up to ``limit``, ascending."""
    return [t for t in range(1, limit + 1) if check_tensor_parallel(spec, t) is None]


def _safe_gib(prepared: PreparedInference) -> float:
    totals = phase_totals(prepared.plan.terms, prepared.plan.phases, batch=prepared.batch,
                          prompt=prepared.tokens.prompt, total=prepared.tokens.total, window=prepared.plan.window)
    return safe_bytes(totals) / prepared.plan.safe_divisor / GIB


def size_cluster(model: Any, precision: str | None = None, *, batch: int = 1, seq_len: int = 4096, engine: str = "hf",
                 kv_dtype: str | None = None, gpus: list[Any] | None = None, mode: str = "inference",
                 max_gpus: int | None = None, **training: Any) -> pd.DataFrame:
    """One row per catalog accelerator (or the given ``gpus``): minimum GPU count, split, speed, cost.

    Columns: ``COLUMNS``. Sorted: usable GPUs first, by $ per 1M tokens (unknown last), then by count.
    ``mode`` other than "inference" sizes a fine-tuning step over data-parallel GPUs instead (default
    sharding zero3; training options as in ``estimate_memory``; see ``planner.memory.training.sizing``);
    accelerators that cannot run the sharding are marked (``gate_sharding``). ``max_gpus``: the GPUs
    the user has of each type; a type that needs more is not usable (the note says how many it needs).
    """
    from planner.memory.api import MAX_GPUS

    if max_gpus is not None:
        max_gpus = _positive_int("max_gpus", max_gpus, MAX_GPUS)
    import hardware_db
    from planner.validate import name_list, reject_non_finite_options

    gpus = name_list(gpus, "gpus")  # one name is a list of one, not a list of characters; [] is an error
    reject_non_finite_options(training)
    accs: list[Accelerator] = [hardware_db.get(g) if not isinstance(g, Accelerator) else g for g in gpus] \
        if gpus else [a for a in hardware_db.list() if not a.is_generic]
    if mode != "inference":
        from planner.memory.training import default_precision
        from planner.memory.training.sizing import training_size_cluster

        frame = training_size_cluster(model, precision or default_precision(mode), accs,
                                      batch=_positive_int("batch", batch, MAX_BATCH),
                                      seq_len=_positive_int("seq_len", seq_len, MAX_TOKENS), mode=mode, **training)
        return cap_gpus(gate_sharding(frame, {acc.name: acc for acc in accs}), max_gpus)
    if training:
        raise InvalidRequestError(f"unknown option(s) {', '.join(training)} for mode='inference'.")
    spec = get_model(model)
    if precision is None:
        from planner.models.checkpoint import default_precision

        precision = default_precision(spec)
    fmt = get_format(precision)
    profile = get_engine(engine)
    batch = _positive_int("batch", batch, MAX_BATCH)
    seq_len = _positive_int("seq_len", seq_len, MAX_TOKENS)
    if profile.name not in fmt.engines:
        raise InvalidRequestError(f"{fmt.name} is not run by the {profile.name} engine (runs on: {', '.join(fmt.engines)}).")
    cache: dict[tuple[int, int], tuple[float, PreparedInference] | None] = {}

    def per_device(tp: int, pp: int) -> tuple[float, PreparedInference] | None:
        if (tp, pp) not in cache:
            try:
                prepared = prepare_inference(spec, fmt, batch=batch, seq_len=seq_len, engine=profile.name,
                                             kv_dtype=kv_dtype, check_support=False, split=(tp, pp))
                cache[tp, pp] = (_safe_gib(prepared), prepared)
            except FitplanError:
                cache[tp, pp] = None
        return cache[tp, pp]

    rows = [_row(acc, spec, fmt, profile, batch, seq_len, per_device) for acc in accs]
    frame = cap_gpus(pd.DataFrame(rows, columns=list(COLUMNS)), max_gpus)
    frame["_usable"] = frame["gpus"].notna()
    frame = frame.sort_values(["_usable", "usd_per_million_tokens", "gpus", "gpu"],
                              ascending=[False, True, True, True], na_position="last", kind="stable")
    return frame.drop(columns="_usable").reset_index(drop=True)


def _row(acc: Accelerator, spec, fmt, profile, batch: int, seq_len: int, per_device) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS, np.nan)
    row.update(gpu=acc.name, usable_gib=acc.memory_usable_gib, note="")
    support = format_support(fmt, acc, profile.name)
    row["supported"] = support.supported is not False
    if support.supported is False:
        row["note"] = support.reason
        return row
    usable = acc.memory_usable_gib
    sizes = tensor_parallel_sizes(spec, acc.gpus_per_node)
    found = None
    for tp in sizes:
        result = per_device(tp, 1)
        if result is not None and result[0] <= usable:
            found = (tp, 1, result)
            break
    if found is None and sizes:
        tp = sizes[-1]
        for pp in range(2, min(MAX_PIPELINE_STAGES, spec.total_layers) + 1):
            result = per_device(tp, pp)
            if result is not None and result[0] <= usable:
                found = (tp, pp, result)
                break
    if found is None:
        row["note"] = (f"does not fit even on {sizes[-1] if sizes else 1} x {min(MAX_PIPELINE_STAGES, spec.total_layers)}"
                       f" GPUs" if sizes else "no valid tensor-parallel size")
        return row
    tp, pp, (safe, prepared) = found
    n = tp * pp
    # Pipeline stages run one after another for one batch, so a step reads every stage's share:
    # the whole model / tp and the KV cache of all stages (planner.speed.model).
    try:
        speed = speed_of(prepared, get_speed_engine(profile.name), acc)
        decode, prefill = speed.decode_tokens_per_s, speed.prefill_tokens_per_s
    except SpeedUnknown:
        decode = prefill = None
    cost = estimate_cost(acc, n, decode, prefill)
    row.update(gpus=n, tp=tp, pp=pp, per_gpu_safe_gib=safe, memory_utilization_pct=100 * safe / usable,
               decode_tok_s=decode, prefill_tok_s=prefill, usd_per_hour=cost.usd_per_hour, purchase_usd=cost.purchase_usd,
               usd_per_million_tokens=cost.usd_per_million_output_tokens)
    notes = []
    if support.supported is None:
        notes.append(support.reason)
    if acc.memory_bandwidth_gbps is None:
        notes.append("bandwidth unknown: no speed")
    if acc.cloud_usd_per_hour is None:
        notes.append("no cloud price")
    row["note"] = "; ".join(notes)
    return row


def gate_sharding(frame: pd.DataFrame, accs: dict[str, Accelerator]) -> pd.DataFrame:
    """Mark the rows of a fine-tuning ``size`` whose accelerator cannot run the sharding
    (``planner.sizing.distributed``): supported False, the reason first in the note, after the rows
    that can run (the order is otherwise kept)."""
    from planner.sizing.distributed import sharding_support

    if frame.empty or "sharding" not in frame.columns:
        return frame
    frame = frame.copy()
    runs = []
    for index, row in frame.iterrows():
        gpus = int(row["gpus"]) if pd.notna(row["gpus"]) else 1
        support = sharding_support(accs[row["gpu"]], str(row["sharding"]), gpus)
        runs.append(support.supported is not False)
        if support.supported is False:
            frame.at[index, "supported"] = False
            note = str(row["note"] or "")
            frame.at[index, "note"] = f"cannot run {row['sharding']}: {support.reason}" + (f"; {note}" if note else "")
    frame["_runs"] = runs
    frame = frame.sort_values("_runs", ascending=False, kind="stable").drop(columns="_runs")
    return frame.reset_index(drop=True)


def cap_gpus(frame: pd.DataFrame, max_gpus: int | None) -> pd.DataFrame:
    """Rows needing more than ``max_gpus`` GPUs: not usable (``gpus`` NaN, marked unsupported), the
    count they need in the note; usable rows first (order otherwise kept)."""
    if max_gpus is None or frame.empty:
        return frame
    frame = frame.copy()
    over = frame["gpus"].notna() & (frame["gpus"] > max_gpus)
    for index in frame.index[over]:
        need = int(frame.at[index, "gpus"])
        note = str(frame.at[index, "note"] or "")
        frame.at[index, "note"] = f"needs {need} GPUs, more than --gpus {max_gpus}" + (f"; {note}" if note else "")
    frame.loc[over, "gpus"] = np.nan
    frame.loc[over, "supported"] = False
    order = frame["gpus"].notna().to_numpy()
    return pd.concat([frame[order], frame[~order]]).reset_index(drop=True)

