"""``what_fits``: which (model, precision) pairs fit on a GPU, and how well.

Rows are every (GPU, model, precision); the GPU-independent memory of each (model, precision) is
computed once per (models, precisions, engine, KV dtype, context, batch) and compared with every GPU
at once by numpy broadcasting.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hardware_db import Accelerator
from planner.errors import InvalidRequestError
from planner.formats import get_format
from planner.memory.api import MAX_BATCH, MAX_TOKENS, _positive_int
from planner.memory.devices import format_support, resolve_gpu
from planner.memory.engines import get_engine
from planner.models.resolve import get_model
from planner.sizing.table import GIB, _cached_table

if TYPE_CHECKING:
    import pandas as pd

# Eight common precisions per engine (the default of what_fits).
DEFAULT_PRECISIONS: dict[str, tuple[str, ...]] = {
    "hf": ("bf16", "fp16", "fp8-block", "int8", "nf4", "nf4-dq", "gptq-int4", "awq-int4"),
    "litgpt": ("bf16", "fp16", "fp32", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq"),
    "vllm": ("bf16", "fp16", "fp8", "fp8-block", "gptq-int8", "gptq-int4", "awq-int4", "nvfp4"),
    "llamacpp": ("gguf-f16", "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_0", "gguf-q3_k_m",
                 "gguf-q2_k"),
}

COLUMNS: dict[str, str] = {
    "gpu": "accelerator name",
    "model": "model name",
    "params_b": "total parameters, billions",
    "precision": "weight format",
    "supported": "the GPU and engine run this format: True, False, or <NA> when unknown (capacity-only device)",
    "fits": "safe_gib <= usable_gib and the format is not unsupported",
    "safe_gib": "upper bound of the per-device memory at this context and batch (what 'fits' uses)",
    "peak_gib": "expected torch.cuda.max_memory_allocated",
    "usable_gib": "memory a framework can allocate on the GPU",
    "headroom_gib": "usable_gib - safe_gib",
    "headroom_pct": "headroom as % of usable_gib",
    "max_context": "longest context (tokens, prompt included) that fits at this batch, capped at the model's maximum",
    "max_batch": "largest batch that fits at this context",
    "decode_tok_s": "decode tokens/s of the whole batch at the full context (planner.speed; NaN when the GPU's "
                    "bandwidth is unknown)",
    "note": "why a row cannot run, or a caveat",
}


def _models(models: Iterable[Any] | None) -> tuple[str, ...]:
    if models is None:
        from planner.models.registry import all_names

        return tuple(all_names())
    names = []
    for model in models:
        spec = get_model(model)
        if spec.source != "registry":
            raise InvalidRequestError(f"what_fits takes registry models; {model!r} is not one. "
                                      "Use estimate_memory for a local config.")
        names.append(spec.name)
    return tuple(names)


def _gpus(gpu: Any) -> list[Accelerator]:
    if isinstance(gpu, (str, Accelerator)):
        return [resolve_gpu(gpu)]
    if isinstance(gpu, Sequence) and gpu:
        unique = {acc.name: acc for acc in (resolve_gpu(g) for g in gpu)}
        return list(unique.values())
    raise InvalidRequestError(f"gpu must be a catalog name, a capacity such as '16GB' or a list of them; got {gpu!r}.")


def what_fits(gpu: Any, models: Iterable[Any] | None = None, precisions: Iterable[str] | None = None, *,
              context: int = 4096, batch: int = 1, engine: str = "hf", kv_dtype: str | None = None,
              mode: str = "inference", **training: Any) -> pd.DataFrame:
    """One row per (GPU, model, precision): does it fit, with what headroom, how far it stretches.

    ``gpu`` is a catalog name, a capacity string ("16GB") or a list of those. Defaults: every registry
    model x the engine's eight common precisions (``DEFAULT_PRECISIONS``); the whole context is taken
    as the prompt (the worst case for the prefill). Columns: ``COLUMNS``. Sorted per GPU: fitting rows
    first, then by parameters (largest first), then by memory (largest first).

    ``mode`` other than "inference" (full, lora, qlora, freeze) sizes one fine-tuning step instead, with
    the training options of ``estimate_memory`` (``seq_len`` = the training sequence, default
    ``context``); columns ``planner.memory.training.sizing.FITS_COLUMNS``.
    """
    if mode != "inference":
        from planner.memory.training.sizing import training_what_fits

        seq_len = _positive_int("seq_len", training.pop("seq_len", context), MAX_TOKENS)
        return training_what_fits(_gpus(gpu), _models(models), list(precisions) if precisions else None,
                                  seq_len=seq_len, batch=_positive_int("batch", batch, MAX_BATCH), mode=mode,
                                  **training)
    if training:
        raise InvalidRequestError(f"unknown option(s) {', '.join(training)} for mode='inference'.")
    return fit_columns(gpu, models, precisions, context=context, batch=batch, engine=engine,
                       kv_dtype=kv_dtype).to_frame()


@dataclass(frozen=True)
class FitColumns:
    """The rows of an inference :func:`what_fits` as numpy columns (``COLUMNS`` order), before pandas.

    Categorical columns (gpu, model, precision, note) hold codes into ``categories[column]``;
    ``supported`` holds 1 / 0 / -1 for True / False / unknown. ``fitplan fits`` prints its default table
    from these columns, so it does not import pandas (a quarter of a second of start-up).
    """

    data: dict[str, np.ndarray]
    categories: dict[str, list[str]]

    def column(self, name: str) -> np.ndarray:
        """One column with categories decoded (object array of str) and ``supported`` as True/False/None."""
        values = self.data[name]
        if name in self.categories:
            return np.array(self.categories[name], dtype=object)[values]
        if name == "supported":
            return np.array([None, False, True], dtype=object)[values + 1]
        return values

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        columns: dict[str, Any] = {}
        for name, values in self.data.items():
            if name in self.categories:
                columns[name] = pd.Categorical.from_codes(values, self.categories[name])
            elif name == "supported":
                columns[name] = pd.arrays.BooleanArray(values > 0, values < 0)
            else:
                columns[name] = values
        return pd.DataFrame(columns)


def fit_columns(gpu: Any, models: Iterable[Any] | None = None, precisions: Iterable[str] | None = None, *,
                context: int = 4096, batch: int = 1, engine: str = "hf", kv_dtype: str | None = None) -> FitColumns:
    """The rows of ``what_fits(..., mode="inference")`` as numpy columns (see :class:`FitColumns`)."""
    context = _positive_int("context", context, MAX_TOKENS)
    batch = _positive_int("batch", batch, MAX_BATCH)
    profile = get_engine(engine)
    accs = _gpus(gpu)
    names = tuple(dict.fromkeys(_models(models)))
    formats = tuple(dict.fromkeys(get_format(p).name for p in (precisions or DEFAULT_PRECISIONS[profile.name])))
    table = _cached_table(names, formats, profile.name, kv_dtype, context, batch)
    rows = table.rows
    n, g = len(rows), len(accs)
    safe = table.safe_bytes(batch, context)
    peak = table.peak_bytes(batch, context)
    fmt_index = np.array([formats.index(r["precision"]) for r in rows])
    errors = np.array([r["error"] or "" for r in rows], dtype=object)
    has_error = errors != ""

    # (G, P) support, broadcast to (G, R) through each row's precision.
    support = [[format_support(get_format(f), acc, profile.name) for f in formats] for acc in accs]
    state = np.array([[{True: 1, False: 0, None: -1}[s.supported] for s in per_gpu] for per_gpu in support])[:, fmt_index]
    reasons = np.array([[s.reason for s in per_gpu] for per_gpu in support], dtype=object)[:, fmt_index]
    unsupported = (state == 0) | has_error[None]
    usable = np.array([acc.memory_usable_gib for acc in accs]) * GIB
    # GPUs of equal capacity (69 catalog entries have 29 sizes) share the longest context and largest
    # batch of every row: solve once per distinct capacity.
    distinct: dict[float, int] = {}
    capacity_of_gpu = np.array([distinct.setdefault(c, len(distinct)) for c in usable.tolist()])
    capacities = np.array(list(distinct))
    max_context = table.max_context(batch, capacities)[capacity_of_gpu]
    max_batch = table.max_batch(context, capacities)[capacity_of_gpu]
    fits = (safe[None] <= usable[:, None]) & ~unsupported
    tok_s = decode_speed_columns(table, accs, formats, fmt_index, profile.name, batch, context)
    note = _notes(errors, has_error, reasons, state, context > table.max_tokens, context)
    headroom = usable[:, None] - safe[None]
    finite = np.isfinite(safe)[None]
    state = np.where(has_error[None], 0, state)
    params = np.array([r["params_b"] for r in rows])
    gpu_index = np.repeat(np.arange(g), n)
    safe_all = np.tile(np.where(np.isfinite(safe), safe, np.inf), g)
    order = np.lexsort((-safe_all, -np.tile(params, g), ~fits.ravel(), gpu_index))
    row_index = np.tile(np.arange(n), g)[order]

    def cells(array: np.ndarray) -> np.ndarray:
        return array.ravel()[order]

    data = {
        "gpu": gpu_index[order],
        "model": row_index // len(formats),
        "params_b": params[row_index],
        "precision": fmt_index[row_index],
        "supported": cells(state),
        "fits": cells(fits),
        "safe_gib": np.where(np.isfinite(safe), safe / GIB, np.nan)[row_index],
        "peak_gib": (peak / GIB)[row_index],
        "usable_gib": (usable / GIB)[gpu_index[order]],
        "headroom_gib": cells(np.where(finite, headroom / GIB, np.nan)),
        "headroom_pct": cells(np.where(finite, 100 * headroom / usable[:, None], np.nan)),
        "max_context": cells(np.where(unsupported, 0, max_context).astype("int64")),
        "max_batch": cells(np.where(unsupported, 0, max_batch).astype("int64")),
        "decode_tok_s": cells(np.where(fits, tok_s, np.nan)),
        "note": cells(note[0]),
    }
    categories = {"gpu": [acc.name for acc in accs], "model": list(names), "precision": list(formats),
                  "note": note[1]}
    return FitColumns(data, categories)


def decode_speed_columns(table, accs: list[Accelerator], formats: tuple[str, ...], fmt_index: np.ndarray, engine: str,
                         batch: int, context: int) -> np.ndarray:
    """(G, R) decode tokens/s of the whole batch at ``context`` tokens: the step-time formula of
    ``planner.speed.step`` on every (GPU, row) at once (NaN: bandwidth unknown or the row failed)."""
    from planner.speed.engines import get_speed_engine
    from planner.speed.model import moe_experts_run
    from planner.speed.roofline import decode_flops
    from planner.speed.step import step_terms

    speed = get_speed_engine(engine)
    specs = [p.setup.spec if p is not None else None for p in table.prepared]
    traffic = np.array([r.at(batch) if r is not None else np.nan for r in table.reads]) + table.kv_bytes(batch, context)
    flops = np.array([decode_flops(s, context, batch) if s is not None else np.nan for s in specs])
    layers = np.array([s.total_layers if s is not None else 0 for s in specs], dtype=float)
    experts = np.array([moe_experts_run(s, batch) if s is not None else 0.0 for s in specs])
    fmts = [get_format(f) for f in formats]
    factors = np.array([speed.kernel_factor(f)[0] for f in fmts])[fmt_index]
    bandwidth = np.array([acc.memory_bandwidth_gbps or np.nan for acc in accs], dtype=float)
    peak = np.array([[acc.peak_tflops(f.matmul_dtype) or np.nan for f in fmts] for acc in accs], dtype=float)
    *_, seconds = step_terms(speed, bytes_read=traffic[None], flops=flops[None], bandwidth_gbps=bandwidth[:, None],
                             peak_tflops=peak[:, fmt_index], mfu=speed.decode_mfu, kernel_factor=factors[None],
                             layers=layers[None], experts_run=experts[None])
    return batch / seconds


def _notes(errors: np.ndarray, has_error: np.ndarray, reasons: np.ndarray, state: np.ndarray,
           beyond: np.ndarray, context: int) -> tuple[np.ndarray, list[str]]:
    """(codes (G, R), categories): why a row cannot run, or a caveat ('' when none)."""
    categories = ["", f"{context:,} tokens exceed the model's maximum context",
                  "format support unknown on a capacity-only device"]
    lookup = {text: i for i, text in enumerate(categories)}
    # sorted(set()), not np.unique: on an object array np.unique imports numpy.ma (~40 ms at start-up).
    for text in [*errors[has_error], *sorted(set(reasons[state == 0].tolist()))]:
        lookup.setdefault(text, len(lookup))
    categories = list(lookup)
    error_codes = np.array([lookup.get(text, 0) for text in errors])
    codes = np.where(state == -1, 2, 0)
    codes = np.where(beyond[None], 1, codes)
    if (state == 0).any():
        reason_codes = np.vectorize(lookup.get, otypes=[int])(np.where(state == 0, reasons, ""))
        codes = np.where(state == 0, reason_codes, codes)
    codes = np.where(has_error[None], error_codes[None], codes)
    return codes, categories
