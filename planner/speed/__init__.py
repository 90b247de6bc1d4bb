"""Speed (per-engine step-time model: decode/prefill) and cost ($/hour, purchase, $ per 1M tokens)."""

from planner.speed.cost import estimate_cost, purchase_usd, usd_per_hour, usd_per_million_tokens
from planner.speed.engines import EngineSpeed, get_speed_engine, speed_engine_names
from planner.speed.model import SpeedUnknown, predict_speed
from planner.speed.result import CostEstimate, SpeedEstimate, StepBreakdown
from planner.speed.roofline import ReadBytes, decode_flops, prefill_flops, read_bytes
from planner.speed.step import step_terms

__all__ = ["CostEstimate", "EngineSpeed", "ReadBytes", "SpeedEstimate", "SpeedUnknown", "StepBreakdown",
           "decode_flops", "estimate_cost", "get_speed_engine", "predict_speed", "prefill_flops", "purchase_usd",
           "read_bytes", "speed_engine_names", "step_terms", "usd_per_hour", "usd_per_million_tokens"]
