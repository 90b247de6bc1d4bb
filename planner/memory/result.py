"""The result of every memory estimate, inference or training.

A :class:`MemoryEstimate` is per device (one GPU of the ``gpus`` the job is split over) and carries
every term that was added up as a :class:`MemoryTerm` with its formula, inputs and source, so a user
can check any number (``fitplan estimate --explain``). Three totals, because users compare with
three different tools:

- ``peak_allocated_gib``: what ``torch.cuda.max_memory_allocated()`` reports at the peak (tensors only);
- ``device_total_gib``: what ``nvidia-smi`` shows (plus CUDA context, library workspaces, the
  caching allocator's reserve, communication buffers);
- ``safe_gib``: an upper bound the real device usage should stay under; "fits" compares it with the
  device's usable capacity.

Units: GiB (2**30 bytes) everywhere in this module.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

GIB = 2**30

# Breakdown keys, in display order. Estimators only use the ones that apply.
BREAKDOWN_KEYS: tuple[str, ...] = (
    "weights_quantized", "weights_unquantized", "adapters", "gradients", "optimizer_states", "kv_cache",
    "activations", "logits", "runtime_overhead", "communication_buffers", "allocator_reserve",
)

Counted = Literal["allocated", "reserved", "device"]


class MemoryTerm(BaseModel):
    """One additive term of an estimate, with the formula and inputs that produced it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str = Field(description="breakdown key this term adds to (one of BREAKDOWN_KEYS)")
    label: str = Field(description="what the term is, e.g. 'KV cache (fp16, 4096 tokens)'")
    gib: float = Field(ge=0)
    formula: str = Field(description="the formula, e.g. '2 x layers x kv_heads x head_dim x tokens x bytes'")
    inputs: dict[str, Any] = Field(default_factory=dict, description="the values substituted in the formula")
    source: str = Field("", description="where the formula or constant comes from")
    counted_in: Counted = Field(
        "allocated",
        description="'allocated' terms are torch tensors (in peak_allocated); 'reserved' adds the caching "
                    "allocator's slack; 'device' terms are outside torch (CUDA context, NCCL)")


class _Typed(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuFit(_Typed):
    """Whether the safe bound fits the GPU's usable memory."""

    gpu: str
    usable_gib: float
    fits: bool
    headroom_gib: float = Field(description="usable_gib - safe_gib")
    headroom_pct: float = Field(description="headroom as % of usable_gib")
    format_support: str | None = Field(None, description="why the format does or may not run on this GPU")


class KVPool(_Typed):
    """vLLM's KV-cache pool on one device: gpu_memory_utilization x capacity minus everything else."""

    kv_pool_gib: float
    kv_cache_tokens: int
    max_concurrent_sequences: int = Field(description="sequences of seq_len tokens the pool holds")


class TrainingFigures(_Typed):
    """Figures of a fine-tuning estimate beside its memory (planner.memory.training)."""

    trainable_params: int
    adapter_params: int = 0
    activation_bytes_per_token_per_layer: float | None = None
    largest_saved_tensors_bytes_per_token: dict[str, float] = Field(default_factory=dict)
    flops_per_token: float | None = None
    flops_formula: str | None = None
    sharding_notes: tuple[str, ...] = ()
    tokens_per_second: float | None = None
    mfu: float | None = None
    peak_tflops: float | None = None
    mfu_source: str | None = None
    training_tokens: float | None = None
    training_hours: float | None = None
    gpu_hours: float | None = None
    cost_usd: float | None = None
    usd_per_gpu_hour: float | None = None


class CpuFigures(_Typed):
    """Figures of a CPU estimate (planner.memory.cpu): every phase's predicted peak and the stored weights."""

    phases_bytes: dict[str, float]
    weight_bytes: float


class MemoryEstimate(BaseModel):
    """Per-device memory needed by one model run, with its breakdown and assumptions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    params_total: int
    params_active: int
    precision: str
    mode: str = Field(description="'inference', 'full', 'lora', 'qlora' or 'freeze'")
    engine: str
    gpus: int = Field(ge=1)
    batch: int = Field(ge=1)
    seq_len: int = Field(ge=1, description="tokens per sequence at the peak")
    peak_allocated_gib: float = Field(description="torch.cuda.max_memory_allocated at the peak, per device")
    device_total_gib: float = Field(description="nvidia-smi usage at the peak, per device")
    safe_gib: float = Field(description="upper bound the real device usage should stay under, per device")
    breakdown_gib: dict[str, float] = Field(description="sum of the terms by key, per device")
    terms: tuple[MemoryTerm, ...] = Field(description="every term, with formula, inputs and source")
    host_ram_gib: float = Field(0.0, description="CPU RAM for offloaded optimizer states or parameters")
    assumptions: dict[str, Any] = Field(default_factory=dict, description="every default the estimate used")
    warnings: tuple[str, ...] = ()
    peak_phase: str | None = Field(None, description="the phase with the largest allocated total")
    peak_phase_description: str | None = None
    phases_gib: dict[str, float] = Field(default_factory=dict, description="allocated total of every phase")
    phases_safe_gib: dict[str, float] = Field(default_factory=dict, description="safe bound of every phase")
    safe_allocated_gib: float | None = Field(None, description="largest allocated total with terms at their upper bound")
    kv_cache_bytes_per_token: float | None = None
    weights_all_devices_gib: float | None = None
    total_all_devices_gib: float | None = Field(None, description="allocated over all devices when split")
    fit: GpuFit | None = Field(None, description="fit on the GPU, when one was given")
    kv_pool: KVPool | None = Field(None, description="vLLM KV pool on the GPU, when one was given")
    training: TrainingFigures | None = Field(None, description="fine-tuning modes")
    cpu: CpuFigures | None = Field(None, description="CPU estimates")

    def as_json_dict(self) -> dict[str, Any]:
        """The ``fitplan estimate --json`` payload."""
        return self.model_dump(mode="json")


def sum_terms(terms: list[MemoryTerm] | tuple[MemoryTerm, ...]) -> dict[str, float]:
    """Breakdown by key (GiB), keys in BREAKDOWN_KEYS order first."""
    totals: dict[str, float] = {}
    for term in terms:
        totals[term.key] = totals.get(term.key, 0.0) + term.gib
    ordered = {key: totals[key] for key in BREAKDOWN_KEYS if key in totals}
    ordered.update({key: value for key, value in totals.items() if key not in ordered})
    return ordered


def training_fields(figures: dict[str, Any]) -> dict[str, Any]:
    """MemoryEstimate keyword arguments from the figures a training estimate computes (by name)."""
    figures = dict(figures)
    fields: dict[str, Any] = {key: figures.pop(key) for key in ("peak_phase", "phases_gib", "safe_allocated_gib")
                              if key in figures}
    if "fits" in figures:
        fields["fit"] = GpuFit(**{key: figures.pop(key) for key in ("gpu", "usable_gib", "fits", "headroom_gib",
                                                                     "headroom_pct")})
    figures.pop("host_ram_gib", None)  # a MemoryEstimate field of its own
    fields["training"] = TrainingFigures(**figures)
    return fields
