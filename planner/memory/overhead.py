"""Runtime overhead outside the model's tensors: CUDA context, cuBLAS workspace, NCCL buffers,
vLLM's CUDA-graph pool and the caching allocator's slack. Each is a named constant from
``memory_constants.toml`` (value, upper bound, source); these builders turn them into terms.
"""

from __future__ import annotations

from planner.memory.constants import constant
from planner.memory.engines import EngineProfile
from planner.memory.phases import Coeffs, RawTerm

MIB = 2**20


def cuda_context_term(engine: EngineProfile, phases: frozenset[str], *, module_loading: str = "lazy") -> RawTerm:
    """CUDA context of the process on each device (not a torch allocation: nvidia-smi only)."""
    name = engine.cuda_context
    if engine.name != "llamacpp" and module_loading == "eager":
        name = "cuda_context_eager"
    c = constant(name)
    return RawTerm("runtime_overhead", c.label, Coeffs(const=c.bytes), formula="constant", source=c.source,
                   phases=phases, upper=Coeffs(const=c.upper_bytes), inputs={"constant": name},
                   counted_in="device")


def cublas_workspace_term(compute_capability: tuple[int, int] | None, phases: frozenset[str]) -> RawTerm:
    """cuBLAS workspace: 32 MiB from Hopper on, 8.125 MiB before; unknown GPU = the 8.125..32 range."""
    hopper = constant("cublas_workspace_sm90")
    default = constant("cublas_workspace_default")
    if compute_capability is None:
        point, upper, note = default.bytes, hopper.bytes, "GPU unknown: pre-Hopper size, Hopper size as upper bound"
        source = f"{default.source}; {hopper.source}"
    elif compute_capability >= (9, 0):
        point = upper = hopper.bytes
        note, source = "compute capability >= 9.0", hopper.source
    else:
        point = upper = default.bytes
        note, source = "compute capability < 9.0", default.source
    return RawTerm("runtime_overhead", "cuBLAS workspace", Coeffs(const=point), formula="constant",
                   source=source, phases=phases, upper=Coeffs(const=upper), inputs={"note": note})


def nccl_term(tp: int, phases: frozenset[str]) -> RawTerm | None:
    """NCCL communicator buffers per device for tensor parallelism (none for one GPU)."""
    if tp <= 1:
        return None
    name = "nccl_tp2" if tp == 2 else "nccl_tp4" if tp <= 4 else "nccl_tp8"
    c = constant(name)
    return RawTerm("communication_buffers", c.label, Coeffs(const=c.bytes), formula="constant by TP size",
                   source=c.source, phases=phases, inputs={"tp": tp, "constant": name}, counted_in="device")


def cudagraph_term(phases: frozenset[str]) -> RawTerm:
    c = constant("vllm_cudagraph_memory")
    return RawTerm("runtime_overhead", c.label, Coeffs(const=c.bytes), formula="constant", source=c.source,
                   phases=phases, upper=Coeffs(const=c.upper_bytes), inputs={"constant": c.name},
                   counted_in="device")


def allocator_slack_term(weight_waste: float, phases: frozenset[str]) -> RawTerm:
    """The caching allocator's reserve beyond the live tensors: the segment rounding of the resident
    weights (``weights.segment_waste``) plus the partly used 20 MiB and 2 MiB segments.

    Blocks freed after the prefill stay reserved but are split and reused for the (smaller) cache
    growth, so the device total of a run is the largest phase, not a sum of phases.
    """
    slack = constant("allocator_min_slack")
    return RawTerm("allocator_reserve", "caching-allocator reserve", Coeffs(const=slack.bytes + weight_waste),
                   formula="weights' segment rounding + min slack",
                   source=f"{slack.source}; {constant('allocator_round_large').source}", phases=phases,
                   inputs={"weight_segment_waste_mib": round(weight_waste / 2**20, 1)}, counted_in="reserved")
