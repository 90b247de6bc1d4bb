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
    extras: dict[str, Any] = Field(
        default_factory=dict,
        description="engine-specific results, e.g. vLLM 'kv_cache_tokens' and 'max_concurrent_sequences'")

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
