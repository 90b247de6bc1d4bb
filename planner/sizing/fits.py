"""``what_fits``: which (model, precision) pairs fit on a GPU, and how well.

Rows are every (GPU, model, precision); the GPU-independent memory of each (model, precision) is
computed once per (models, precisions, engine, KV dtype, context, batch) and compared with every GPU
at once by numpy broadcasting.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from hardware_db import Accelerator
from planner.errors import InvalidRequestError, UnsupportedError
from planner.formats import get_format
from planner.memory.api import MAX_BATCH, MAX_TOKENS, _positive_int
from planner.memory.devices import format_support, resolve_gpu
from planner.memory.engines import get_engine
from planner.models.resolve import get_model
from planner.sizing.recommend import loss_of, needs_hardware, recommended
from planner.sizing.table import GIB, FitTable, _cached_table

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
    "quality_loss_pct": "typical quality loss of the format (published perplexity increase, %; NaN: no figure)",
    "recommended": "the format fitplan recommends for this model on this GPU (planner.sizing.recommend.RULE)",
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


def _reject_invalid_request(precisions: list[str], errors: list[str | None], *, explicit: bool) -> None:
    """Raise the error of a request that fails for every model (``estimate`` rejects it the same way)
    instead of answering "0 of N models fit"; with explicit precisions, for each of them."""
    from planner.validate import reject_request_wide_errors

    reject_request_wide_errors(errors, "")
    if explicit:
        for precision in dict.fromkeys(precisions):
            reject_request_wide_errors([e for p, e in zip(precisions, errors) if p == precision],
                                       f"--precision {precision}")


def _checkpoint_formats(names: tuple[str, ...], engine: str) -> dict[str, str]:
    """Model -> the format its checkpoint ships in (gpt-oss: mxfp4), for models the engine can run so."""
    from planner.models.checkpoint import checkpoint_format

    found = {}
    for name in names:
        fmt = checkpoint_format(get_model(name))
        if fmt is not None and engine in get_format(fmt).engines:
            found[name] = fmt
    return found


def _gpus(gpu: Any) -> list[Accelerator]:
    if isinstance(gpu, (str, Accelerator)):
        return [resolve_gpu(gpu)]
    if isinstance(gpu, Sequence) and gpu:
        unique = {acc.name: acc for acc in (resolve_gpu(g) for g in gpu)}
        return list(unique.values())
    raise InvalidRequestError(f"gpu must be a catalog name, a capacity such as '16GB' or a list of them; got {gpu!r}.")


@lru_cache(maxsize=32)
def _fits_table(names: tuple[str, ...], precisions: tuple[str, ...] | None, engine: str, kv_dtype: str | None,
                context: int, batch: int, gpus: int) -> tuple[FitTable, tuple[str, ...]]:
    """The GPU-independent table of ``fit_columns`` and its formats: ``precisions``, or the engine's
    defaults plus the checkpoints' own formats (each computed only for its models). Kept in memory and on
    disk (``planner.sizing.table_cache``)."""
    from planner.sizing import table_cache

    def build() -> tuple[FitTable, list[str]]:
        native = _checkpoint_formats(names, engine) if precisions is None else {}
        formats = tuple(dict.fromkeys([*(get_format(p).name for p in (precisions or DEFAULT_PRECISIONS[engine])),
                                       *sorted(set(native.values()))]))
        defaults = set(DEFAULT_PRECISIONS[engine])
        only_for = tuple((fmt, tuple(m for m, f in native.items() if f == fmt))
                         for fmt in sorted(set(native.values())) if fmt not in defaults)
        return _cached_table(names, formats, engine, kv_dtype, context, batch, only_for=only_for, gpus=gpus), list(formats)

    request = ("fits", list(names), list(precisions) if precisions else None, engine, kv_dtype, context, batch, gpus)
    # get_model reads a local path before the registry: a file or directory named like a model in the
    # working directory would make a table the stored one does not describe.
    local = any(os.path.exists(os.path.expanduser(name)) for name in names)
    table, formats = build() if local else table_cache.cached(request, build)
    return table, tuple(formats)


def what_fits(gpu: Any, models: Iterable[Any] | None = None, precisions: Iterable[str] | None = None, *,
              context: int = 4096, batch: int = 1, engine: str = "hf", kv_dtype: str | None = None,
              mode: str = "inference", gpus: int = 1, **training: Any) -> pd.DataFrame:
    """One row per (GPU, model, precision): does it fit, with what headroom, how far it stretches.

    ``gpu`` is a catalog name, a capacity string ("16GB") or a list of those. Defaults: every registry
    model x the engine's eight common precisions (``DEFAULT_PRECISIONS``); the whole context is taken
    as the prompt (the worst case for the prefill). ``gpus`` > 1: the model split over that many GPUs
    of the type, the engine's way (tensor parallel for vLLM, pipeline layers otherwise); memory and
    the fit are per GPU, ``max_batch`` is the concurrency (sequences of ``context`` tokens at once). Columns: ``COLUMNS``. Sorted per GPU: fitting rows
    first, then by parameters (largest first), then by memory (largest first).

    ``mode`` other than "inference" (full, lora, qlora, freeze) sizes one fine-tuning step instead, with
    the training options of ``estimate_memory`` (``seq_len`` = the training sequence, default
    ``context``); columns ``planner.memory.training.sizing.FITS_COLUMNS``.
    """
    from planner.validate import name_list, reject_non_finite_options

    models = name_list(models, "models")
    precisions = name_list(precisions, "precisions")
    reject_non_finite_options(training)
    if mode != "inference":
        from planner.memory.training.sizing import training_what_fits

        if gpus != 1:
            raise InvalidRequestError("gpus (--gpus) applies to inference; fine-tuning takes --sharding and "
                                      "sizes GPUs with `fitplan size --mode ...`.")

        seq_len = _positive_int("seq_len", training.pop("seq_len", context), MAX_TOKENS)
        frame = training_what_fits(_gpus(gpu), _models(models), list(precisions) if precisions else None,
                                   seq_len=seq_len, batch=_positive_int("batch", batch, MAX_BATCH), mode=mode,
                                   **training)
        _reject_invalid_request(list(frame["precision"].astype(str)),
                                [str(n) if s != s else None for n, s in zip(frame["note"], frame["safe_gib"])],
                                explicit=precisions is not None)
        return frame
    if training:
        raise InvalidRequestError(f"unknown option(s) {', '.join(training)} for mode='inference'.")
    return fit_columns(gpu, models, precisions, context=context, batch=batch, engine=engine,
                       kv_dtype=kv_dtype, gpus=gpus).to_frame()


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
                context: int = 4096, batch: int = 1, engine: str = "hf", kv_dtype: str | None = None,
                gpus: int = 1) -> FitColumns:
    """The rows of ``what_fits(..., mode="inference")`` as numpy columns (see :class:`FitColumns`)."""
    from planner.formats import get_kv_dtype
    from planner.memory.api import MAX_GPUS
    from planner.validate import name_list

    context = _positive_int("context", context, MAX_TOKENS)
    batch = _positive_int("batch", batch, MAX_BATCH)
    gpus = _positive_int("gpus", gpus, MAX_GPUS)
    profile = get_engine(engine)
    accs = _gpus(gpu)
    models = name_list(models, "models")
    precisions = name_list(precisions, "precisions")
    if kv_dtype is not None:
        get_kv_dtype(kv_dtype)  # an unknown name is an error, not a table of errors
    for precision in precisions or ():
        fmt = get_format(precision)
        if profile.name not in fmt.engines:
            raise UnsupportedError(f"{fmt.name} is not run by the {profile.name} engine (runs on: "
                                   f"{', '.join(fmt.engines)}); pick another --precision or --engine.")
    names = tuple(dict.fromkeys(_models(models)))
    asked = tuple(get_format(p).name for p in precisions) if precisions else None
    table, formats = _fits_table(names, asked, profile.name, kv_dtype, context, batch, gpus)
    rows = table.rows
    _reject_invalid_request([r["precision"] for r in rows], [r["error"] for r in rows],
                            explicit=precisions is not None)
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

    loss = loss_of(formats)[fmt_index]
    headroom_pct = np.where(finite, 100 * headroom / usable[:, None], np.nan)
    decode = np.where(fits, tok_s, np.nan)
    group = gpu_index * len(names) + np.tile(np.arange(n) // len(formats), g)  # (GPU, model) of each cell
    unsure = (state == -1) & needs_hardware(formats)[fmt_index][None]
    best = recommended(cells(group), cells(fits), cells(headroom_pct), np.tile(loss, g)[order], cells(decode),
                       cells(unsure))

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
        "headroom_pct": cells(headroom_pct),
        "max_context": cells(np.where(unsupported, 0, max_context).astype("int64")),
        "max_batch": cells(np.where(unsupported, 0, max_batch).astype("int64")),
        "decode_tok_s": cells(decode),
        "quality_loss_pct": np.tile(loss, g)[order],
        "recommended": best,
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
    from planner.speed.step import matmul_peak, step_terms

    speed = get_speed_engine(engine)
    inputs = table.decode  # per-row split (tp, pp), weights read, FLOPs / tp, layers, expert runs
    tp, pp = inputs["tp"], inputs["pp"]
    weights, linear, attention = inputs["weight_read"], inputs["linear_flops"], inputs["attention_flops"]
    layers, experts = inputs["layers"], inputs["experts_run"]
    fmts = [get_format(f) for f in formats]
    factors = np.array([speed.kernel_factor(f)[0] for f in fmts])[fmt_index]
    compute = np.array([speed.compute_factor(f)[0] for f in fmts])[fmt_index]
    bandwidth = np.array([acc.memory_bandwidth_gbps or np.nan for acc in accs], dtype=float)
    vector = np.array([acc.fp32_tflops or np.nan for acc in accs], dtype=float)
    peak = np.array([[matmul_peak(speed, acc, f.matmul_dtype) or np.nan for f in fmts] for acc in accs], dtype=float)
    *_, seconds = step_terms(speed, weight_bytes=weights[None], kv_bytes=(table.kv_bytes(batch, context) * pp)[None],
                             linear_flops=linear[None], attention_flops=attention[None],
                             bandwidth_gbps=bandwidth[:, None], peak_tflops=peak[:, fmt_index],
                             vector_tflops=vector[:, None], mfu=speed.decode_mfu, kernel_factor=factors[None],
                             compute_factor=compute[None], layers=layers[None], experts_run=experts[None],
                             devices=tp[None])
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
