"""GPU-independent memory tables for many (model, precision) pairs, evaluated with numpy.

Each row keeps its plan's phases as coefficient arrays over the basis of ``planner.memory.phases``
(``const, batch, batch*T, batch*min(T, window), batch*T^2``), with the whole context taken as the
prompt (the worst case). Any batch/context and any capacity are then answered by array arithmetic:
the safe bound, the longest context and the largest batch that fit (a quadratic in T per phase).
"""

from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from planner.errors import FitplanError
from planner.formats import get_format
from planner.memory.api import PreparedInference, prepare_inference
from planner.memory.phases import BASIS
from planner.models.spec import ModelSpec
from planner.speed.roofline import ReadBytes, read_bytes

GIB = 2**30
MAX_BATCH = 1_000_000


@dataclass
class FitTable:
    """Rows of (model, precision) with per-phase coefficient arrays (bytes). ``reads`` and ``prepared``
    are None on a table loaded from the disk cache (``planner.sizing.table_cache``), which keeps arrays only."""

    rows: list[dict[str, Any]]
    upper: np.ndarray        # (R, K, 5) device-level upper bound (already / vLLM utilization)
    point: np.ndarray        # (R, K, 5) allocated point estimate
    window: np.ndarray       # (R,) sliding window, inf when none
    max_tokens: np.ndarray   # (R,) model max positions, inf when unknown
    reads: list[ReadBytes | None] | None
    kv_per_token: np.ndarray  # (R,) KV bytes per token (full layers; windowed share below)
    kv_window_per_token: np.ndarray
    prepared: list[PreparedInference | None] | None
    decode: dict[str, np.ndarray]  # (R,) per-row inputs of the decode speed at the table's context/batch

    def basis(self, batch: np.ndarray | float, tokens: np.ndarray | float) -> np.ndarray:
        t = np.asarray(tokens, dtype=float)
        b = np.asarray(batch, dtype=float)
        capped = np.minimum(t, self.window)
        return np.stack(np.broadcast_arrays(np.ones_like(capped), b + 0 * capped, b * t + 0 * capped,
                                            b * capped, b * t * t + 0 * capped), axis=-1)

    def safe_bytes(self, batch, tokens) -> np.ndarray:
        return np.max(np.einsum("rkb,rb->rk", self.upper, self.basis(batch, tokens)), axis=1)

    def peak_bytes(self, batch, tokens) -> np.ndarray:
        return np.max(np.einsum("rkb,rb->rk", self.point, self.basis(batch, tokens)), axis=1)

    def kv_bytes(self, batch: int, tokens: int) -> np.ndarray:
        return batch * (self.kv_per_token * tokens + self.kv_window_per_token * np.minimum(tokens, self.window))

    def max_batch(self, tokens: float, capacity: np.ndarray) -> np.ndarray:
        """Largest batch whose safe bound fits ``capacity`` (bytes, shape (G,)) at ``tokens``: (G, R)."""
        t = float(tokens)
        capped = np.minimum(t, self.window)[:, None]
        u = self.upper
        per_seq = (u[..., 1] + u[..., 2] * t + u[..., 3] * capped + u[..., 4] * t * t)[None]
        room = capacity[:, None, None] - u[None, ..., 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            limit = np.where(per_seq > 0, room / per_seq, np.where(room >= 0, np.inf, -np.inf))
        best = np.floor(np.min(limit, axis=2))
        return np.clip(np.nan_to_num(best, nan=0.0, posinf=MAX_BATCH, neginf=0.0), 0, MAX_BATCH)

    def max_context(self, batch: float, capacity: np.ndarray) -> np.ndarray:
        """Longest context (tokens) whose safe bound fits ``capacity`` (bytes, shape (G,)) at ``batch``,
        capped at the model's max positions (0 if not even one token fits): (G, R)."""
        u = self.upper[None]
        b = float(batch)
        w = self.window[None, :, None]
        c = capacity[:, None, None]
        with np.errstate(invalid="ignore"):
            below = _largest_root(b * u[..., 4], b * (u[..., 2] + u[..., 3]), u[..., 0] + b * u[..., 1] - c)
            finite_w = np.where(np.isfinite(w), w, 0.0)
            above = _largest_root(b * u[..., 4], b * u[..., 2],
                                  u[..., 0] + b * u[..., 1] + b * u[..., 3] * finite_w - c)
            per_phase = np.where(below < w, below, np.maximum(above, w))
            best = np.minimum(np.min(per_phase, axis=2), self.max_tokens[None])
        return np.clip(np.floor(np.nan_to_num(best, nan=0.0, posinf=1e12, neginf=0.0)), 0, None)


def _largest_root(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Largest T >= 0 with a T^2 + b T + c <= 0 (a, b >= 0): inf if always true, -inf if never."""
    with np.errstate(divide="ignore", invalid="ignore"):
        disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
        quad = (-b + disc) / (2 * a)
        lin = -c / b
    root = np.where(a > 0, quad, np.where(b > 0, lin, np.where(c <= 0, np.inf, -np.inf)))
    return np.where(c > 0, np.where(root >= 0, root, -np.inf), root)


def _phase_rows(prepared: PreparedInference) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
    """(device upper, allocated point) coefficients, one tuple per phase (upper not yet divided by
    the plan's safe divisor)."""
    plan = prepared.plan
    sums = plan.phase_coefficients()
    return [sums[p.name][0] for p in plan.phases], [sums[p.name][1] for p in plan.phases]


@lru_cache(maxsize=32)
def _cached_table(model_ids: tuple[str, ...], precisions: tuple[str, ...], engine: str,
                  kv_dtype: str | None, context: int, batch: int,
                  only_for: tuple[tuple[str, tuple[str, ...]], ...] = (), gpus: int = 1) -> FitTable:
    from planner.models.resolve import get_model

    return build_table([get_model(m) for m in model_ids], precisions, engine=engine, kv_dtype=kv_dtype,
                       context=context, batch=batch, only_for=only_for, gpus=gpus)


def build_table(specs: list[ModelSpec], precisions: tuple[str, ...], *, engine: str, kv_dtype: str | None,
                context: int, batch: int, only_for: tuple[tuple[str, tuple[str, ...]], ...] = (),
                gpus: int = 1) -> FitTable:
    """Prepare every (model, precision) once, split over ``gpus`` devices the engine's way (memory per
    device); rows an engine cannot run (or split) carry the reason.

    ``only_for`` = ((precision, model names), ...): precisions computed only for those models (a
    checkpoint's own format such as gpt-oss's mxfp4); the other models' rows carry that reason.
    """
    collecting = gc.isenabled()
    gc.disable()  # thousands of short-lived small objects: cyclic GC passes only cost time here
    try:
        return _build_table(specs, precisions, engine=engine, kv_dtype=kv_dtype, context=context, batch=batch,
                            only_for=dict(only_for), gpus=gpus)
    finally:
        if collecting:
            # The plans built here survive in caches: let them join the oldest generation directly
            # (freeze + unfreeze moves every tracked object there) rather than be scanned by the next
            # young-generation pass (~70 ms for a whole-registry table). Nothing is left uncollected.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def _build_table(specs: list[ModelSpec], precisions: tuple[str, ...], *, engine: str, kv_dtype: str | None,
                 context: int, batch: int, only_for: dict[str, tuple[str, ...]], gpus: int = 1) -> FitTable:
    rows, uppers, points, divisors, prepared_list, reads = [], [], [], [], [], []
    windows, limits, kv_full, kv_window = [], [], [], []
    for spec in specs:
        for precision in precisions:
            fmt = get_format(precision)
            row = {"model": spec.name, "params_b": spec.params.total / 1e9, "active_params_b": spec.params.active / 1e9,
                   "precision": fmt.name, "engine": engine, "error": None}
            try:
                if fmt.name in only_for and spec.name not in only_for[fmt.name]:
                    raise FitplanError(f"{fmt.name} is listed only for checkpoints that ship in it")
                prepared = prepare_inference(spec, fmt, batch=batch, seq_len=context, engine=engine,
                                             kv_dtype=kv_dtype, check_support=False, gpus=gpus)
            except FitplanError as error:
                row["error"] = str(error)
                prepared = None
            rows.append(row)
            prepared_list.append(prepared)
            if prepared is None:
                uppers.append([(math.inf,) * len(BASIS)])
                points.append([(math.nan,) * len(BASIS)])
                divisors.append(1.0)
                reads.append(None)
                windows.append(math.inf)
                kv_full.append(0.0)
                kv_window.append(0.0)
            else:
                upper, point = _phase_rows(prepared)
                uppers.append(upper)
                points.append(point)
                plan = prepared.plan
                divisors.append(plan.safe_divisor)
                reads.append(read_bytes(spec, plan.weights, prepared.setup.tp))
                windows.append(plan.window if plan.window else math.inf)
                kv_full.append(plan.kv_coeffs.per_token)
                kv_window.append(plan.kv_coeffs.per_window_token)
            limits.append(spec.max_position_embeddings or math.inf)
    # One array for all rows (rows with fewer phases padded with zero phases), not one per row.
    depth = max(len(u) for u in uppers)
    padding = (0.0,) * len(BASIS)
    upper = np.array([u + [padding] * (depth - len(u)) for u in uppers])
    point = np.array([p + [padding] * (depth - len(p)) for p in points])
    upper /= np.array(divisors)[:, None, None]
    return FitTable(rows, upper, point, np.array(windows, dtype=float), np.array(limits, dtype=float), reads,
                    np.array(kv_full), np.array(kv_window), prepared_list,
                    _decode_inputs(prepared_list, reads, context, batch))


DECODE_INPUTS = ("tp", "pp", "weight_read", "linear_flops", "attention_flops", "layers", "experts_run")


def _decode_inputs(prepared: list[PreparedInference | None], reads: list[ReadBytes | None], context: int,
                   batch: int) -> dict[str, np.ndarray]:
    """Per-row inputs of ``planner.sizing.fits.decode_speed_columns`` at the table's context and batch
    (as ``planner.speed.model.speed_of``: FLOPs / tp, weights read at the batch); NaN / 0 for failed rows.
    Arrays only, so a table can be stored on disk without its prepared plans."""
    from planner.speed.model import moe_experts_run
    from planner.speed.roofline import decode_step_flops

    per_spec: dict[tuple[int, int], tuple[float, float, float, float]] = {}
    out: dict[str, list[float]] = {name: [] for name in DECODE_INPUTS}
    for p, r in zip(prepared, reads):
        if p is None:
            values = (1, 1, math.nan, math.nan, math.nan, 0.0, 0.0)
        else:
            spec, tp = p.setup.spec, p.setup.tp
            key = (id(spec), tp)
            if key not in per_spec:  # one spec, many precisions: the FLOPs do not depend on the format
                flops = decode_step_flops(spec, context, batch).split(tp)
                per_spec[key] = (flops.linear, flops.attention, float(spec.total_layers),
                                 moe_experts_run(spec, batch))
            values = (tp, p.setup.pp, r.at(batch), *per_spec[key])
        for name, value in zip(DECODE_INPUTS, values):
            out[name].append(value)
    return {name: np.array(values, dtype=int if name in ("tp", "pp") else float) for name, values in out.items()}
