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
