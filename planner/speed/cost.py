"""Cost: cloud $/hour for N GPUs, purchase cost, and $ per million generated tokens.

``$/1M tokens = $/hour x N / (tokens/s x 3600) x 1e6`` (llm-analysis: ``$/hr x GPUs / 3600 / tok/s``).
A GPU without a cloud price or launch price gives None, never an invented price.
"""

from __future__ import annotations

from hardware_db import Accelerator


def usd_per_hour(acc: Accelerator, gpus: int) -> float | None:
    return acc.cloud_usd_per_hour * gpus if acc.cloud_usd_per_hour is not None else None


def purchase_usd(acc: Accelerator, gpus: int) -> float | None:
    return acc.launch_price_usd * gpus if acc.launch_price_usd is not None else None


def usd_per_million_tokens(hourly: float | None, tokens_per_s: float | None) -> float | None:
    if hourly is None or not tokens_per_s:
        return None
    return hourly / (tokens_per_s * 3600.0) * 1e6


def estimate_cost(acc: Accelerator, gpus: int, decode_tokens_per_s: float | None,
                  prefill_tokens_per_s: float | None):
    """CostEstimate of ``gpus`` x ``acc`` at the predicted speeds (missing prices stay None)."""
    from planner.speed.result import CostEstimate

    hourly = usd_per_hour(acc, gpus)
    notes = []
    if hourly is None:
        notes.append(f"no cloud price for {acc.name} in the catalog: no $/hour or $/1M tokens")
    if decode_tokens_per_s is None:
        notes.append("no speed: no $/1M tokens")
    return CostEstimate(gpu=acc.name, gpus=gpus, usd_per_hour=hourly, purchase_usd=purchase_usd(acc, gpus),
                        usd_per_million_output_tokens=usd_per_million_tokens(hourly, decode_tokens_per_s),
                        usd_per_million_input_tokens=usd_per_million_tokens(hourly, prefill_tokens_per_s),
                        price_source=(f"{acc.cloud_provider or 'cloud'} {acc.cloud_price_date or ''}: "
                                      f"{acc.cloud_price_source}" if hourly is not None else None),
                        notes=tuple(notes))
