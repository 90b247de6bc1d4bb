"""The memory model: pure formula functions combined into a per-device MemoryEstimate.

Public pieces (shared with the training estimator): :func:`estimate_memory`, :func:`weight_bytes`,
:func:`kv_bytes_per_token` / :func:`kv_cache_bytes`, the overhead term builders in
:mod:`planner.memory.overhead`, the phase/safe-bound rule in :mod:`planner.memory.phases` and the
device checks in :mod:`planner.memory.devices`.
"""

from planner.memory.api import InferenceOptions, estimate_memory, prepare_inference
from planner.memory.devices import fits_on, format_support, resolve_gpu, usable_gib
from planner.memory.kv_cache import kv_bytes_per_token, kv_cache_bytes, kv_layout
from planner.memory.phases import Coeffs, PhaseSpec, RawTerm, safe_bytes
from planner.memory.result import BREAKDOWN_KEYS, GIB, MemoryEstimate, MemoryTerm, sum_terms
from planner.memory.weights import WeightBytes, weight_bytes

__all__ = [
    "BREAKDOWN_KEYS", "GIB", "Coeffs", "InferenceOptions", "MemoryEstimate", "MemoryTerm", "PhaseSpec", "RawTerm",
    "WeightBytes", "estimate_memory", "fits_on", "format_support", "kv_bytes_per_token", "kv_cache_bytes",
    "kv_layout", "prepare_inference", "resolve_gpu", "safe_bytes", "sum_terms", "usable_gib", "weight_bytes",
]
