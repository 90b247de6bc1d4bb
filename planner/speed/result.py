"""Typed results of the speed and cost model (what ``planner.estimate`` returns next to the memory)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class StepBreakdown(BaseModel):
    """One forward step: the terms of ``max(bytes, compute) / multi-GPU efficiency + overhead``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seconds: float = Field(description="time of the step")
    bytes_seconds: float = Field(description="bytes read / (bandwidth x efficiency x kernel factor)")
    compute_seconds: float | None = Field(description="FLOPs / (peak TFLOPS x MFU); None when the TFLOPS are unknown")
    overhead_seconds: float = Field(description="step + per-layer (+ per-expert) fixed costs of the engine")
    bound: Literal["memory", "compute", "overhead"] = Field(description="the term that dominates the step")
    bytes_read: float = Field(description="bytes read per device in the step")
    flops: float = Field(description="FLOPs per device in the step")
    tokens: int = Field(description="tokens the step produces or processes (whole batch)")
    formula: str
    inputs: dict[str, Any] = Field(default_factory=dict, description="the values substituted in the formula")
    sources: tuple[str, ...] = Field((), description="where each constant comes from")


class SpeedEstimate(BaseModel):
    """Decode and prefill speed of one inference setup on one device type, with breakdowns."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str
    gpu: str
    gpus: int
    batch: int
    prompt_tokens: int
    new_tokens: int
    decode_context: int = Field(description="tokens in context at the decode step modelled (prompt + new/2)")
    decode_tokens_per_s: float = Field(description="generated tokens per second of the whole batch")
    decode_tokens_per_s_per_user: float = Field(description="generated tokens per second one sequence sees")
    per_token_latency_ms: float = Field(description="time between two generated tokens of one sequence")
    prefill_tokens_per_s: float | None = Field(description="prompt tokens per second (None: TFLOPS unknown)")
    ttft_ms: float | None = Field(description="time to first token: the prefill of the whole batch")
    generation_s: float | None = Field(description="ttft + new_tokens x per-token latency (one request)")
    decode: StepBreakdown
    prefill: StepBreakdown | None
    continuous_batching: bool = Field(description="the engine schedules requests into the running batch")
    calibrated: tuple[str, ...] = Field((), description="engine constants fitted on published measurements")
    notes: tuple[str, ...] = ()


class CostEstimate(BaseModel):
    """What the GPUs of the setup cost, and the price of a million tokens at the predicted speed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    gpu: str
    gpus: int
    usd_per_hour: float | None = Field(description="on-demand cloud price of all GPUs (None: no price in the catalog)")
    purchase_usd: float | None = Field(description="launch price of all GPUs (None: unknown)")
    usd_per_million_output_tokens: float | None = Field(description="usd_per_hour / (decode tok/s x 3600) x 1e6")
    usd_per_million_input_tokens: float | None = Field(description="usd_per_hour / (prefill tok/s x 3600) x 1e6")
    price_source: str | None = None
    notes: tuple[str, ...] = ()
