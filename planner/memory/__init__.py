"""The memory model: pure formula functions combined into a per-device MemoryEstimate."""

from planner.memory.result import BREAKDOWN_KEYS, GIB, MemoryEstimate, MemoryTerm, sum_terms

__all__ = ["BREAKDOWN_KEYS", "GIB", "MemoryEstimate", "MemoryTerm", "sum_terms"]
