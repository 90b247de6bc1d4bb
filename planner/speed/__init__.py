"""Speed (roofline decode/prefill) and cost ($/hour, purchase, $ per 1M tokens) of inference."""

from planner.speed.cost import purchase_usd, usd_per_hour, usd_per_million_tokens
from planner.speed.roofline import (
    ReadBytes,
    decode_tokens_per_s,
    prefill_flops,
    prefill_tokens_per_s,
    read_bytes,
)

__all__ = ["ReadBytes", "decode_tokens_per_s", "prefill_flops", "prefill_tokens_per_s", "purchase_usd",
           "read_bytes", "usd_per_hour", "usd_per_million_tokens"]
