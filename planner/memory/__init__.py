"""The memory model: pure formula functions combined into a per-device MemoryEstimate.

Public pieces (shared with the training estimator): :func:`estimate_memory`, :func:`weight_bytes`,
:func:`kv_bytes_per_token` / :func:`kv_cache_bytes`, the overhead term builders in
:mod:`planner.memory.overhead`, the phase/safe-bound rule in :mod:`planner.memory.phases` and the
device checks in :mod:`planner.memory.devices`. Names are imported on first use (PEP 562), so
importing one submodule (e.g. ``planner.memory.engines``) does not load the whole model.
"""

from planner._lazy import lazy_getattr
from planner.memory.result import BREAKDOWN_KEYS, GIB, MemoryEstimate, MemoryTerm, sum_terms

_LAZY = {
    "InferenceOptions": "planner.memory.api", "estimate_memory": "planner.memory.api",
    "prepare_inference": "planner.memory.api",
    "fits_on": "planner.memory.devices", "format_support": "planner.memory.devices",
    "resolve_gpu": "planner.memory.devices", "usable_gib": "planner.memory.devices",
    "kv_bytes_per_token": "planner.memory.kv_cache", "kv_cache_bytes": "planner.memory.kv_cache",
    "kv_layout": "planner.memory.kv_cache",
    "Coeffs": "planner.memory.phases", "PhaseSpec": "planner.memory.phases", "RawTerm": "planner.memory.phases",
    "safe_bytes": "planner.memory.phases",
    "WeightBytes": "planner.memory.weights", "weight_bytes": "planner.memory.weights",
    "CpuWorkload": "planner.memory.cpu", "estimate_cpu_process_memory": "planner.memory.cpu",
}

__all__ = ["BREAKDOWN_KEYS", "GIB", "MemoryEstimate", "MemoryTerm", "sum_terms", *_LAZY]


__getattr__ = lazy_getattr("planner.memory", _LAZY, globals())
