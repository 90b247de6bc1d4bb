"""Checking candidates against the user's limits: one rule per limit, evaluated on numpy columns.

A limit is violated by ``amount = value - limit`` (max limits) or ``limit - value`` (min limits) when
that is positive; an unknown value (no speed on this device) violates its limit with amount ``inf``.
``relative`` divides the amount by the limit, so misses of different kinds can be ranked together.
The same functions check one candidate (``evaluate_candidate``) and a whole grid (``plan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Limit:
    name: str        # Constraints field
    column: str      # candidate column it is compared with
    kind: str        # "max" or "min"
    unit: str
    what: str        # noun for messages


LIMITS: dict[str, Limit] = {limit.name: limit for limit in (
    Limit("max_memory_gb", "memory_gib", "max", "GiB", "memory per GPU"),
    Limit("max_accuracy_loss", "loss_pct", "max", "%", "predicted quality loss"),
    Limit("min_speedup", "speedup", "min", "x", "speedup"),
    Limit("max_cost_per_hour", "usd_per_hour", "max", "$/h", "cost per hour"),
    Limit("max_cost_per_1m_tokens", "usd_per_1m_tokens", "max", "$/1M tokens", "cost per 1M tokens"),
    Limit("min_tokens_per_s", "tokens_per_s", "min", "tok/s", "decode throughput"),
)}


def violation_amounts(values: np.ndarray, limit: Limit, bound: float) -> np.ndarray:
    """Amount by which each value violates ``bound`` (0 where it holds, inf where the value is unknown)."""
    values = np.asarray(values, dtype=float)
    amount = values - bound if limit.kind == "max" else bound - values
    amount = np.where(np.isnan(values), np.inf, amount)
    return np.maximum(amount, 0.0)


def format_value(limit: Limit, value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    if limit.unit == "x":
        return f"{value:.2f}x"
    if limit.unit.startswith("$"):
        return f"${value:,.2f}{limit.unit[1:]}"
    if limit.unit == "%":
        return f"{value:.2f}%" if abs(value) < 1 else f"{value:.1f}%"
    if limit.unit == "tok/s":
        return f"{value:,.0f} tok/s"
    return f"{value:.1f} {limit.unit}"


def describe(limit: Limit, value: float | None, bound: float) -> str:
    """'needs 17.2 GiB > 16.0 GiB', 'speedup 1.21x < 1.50x', 'predicted quality loss 6.1% > 5.0%'."""
    sign = ">" if limit.kind == "max" else "<"
    shown, bound_text = format_value(limit, value), format_value(limit, bound)
    if limit.name == "max_memory_gb":
        return f"needs {shown} > {bound_text} per GPU"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{limit.what} unknown on this device (limit {bound_text})"
    return f"{limit.what} {shown} {sign} {bound_text}"


def _decimals(limit: Limit, value: float) -> int:
    if limit.unit in ("x",) or limit.unit.startswith("$"):
        return 2
    if limit.unit == "%":
        return 2 if abs(value) < 1 else 1
    if limit.unit == "tok/s":
        return 0
    return 1


def admitting(limit: Limit, value: float) -> float:
    """``value`` rounded to the precision it is shown with, in the direction that still admits it
    (up for max limits, down for min limits), so a relaxation read off the screen works."""
    scale = 10 ** _decimals(limit, value)
    return (math.ceil(value * scale - 1e-9) if limit.kind == "max" else math.floor(value * scale + 1e-9)) / scale
