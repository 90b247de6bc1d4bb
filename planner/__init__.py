"""fitplan's planner: model specs, precision formats, the memory/speed/cost model and the CLI.

Never imports torch: everything here works from config.json facts and data files.
"""

from planner.errors import (
    FitplanError,
    InvalidConfigError,
    InvalidRequestError,
    OfflineError,
    UnknownFormatError,
    UnknownModelError,
    UnsupportedError,
)
from planner._lazy import lazy_getattr
from planner.models import ModelSpec, ParameterBreakdown, ParamGroup, get_model, list_models

# Imported on first use (PEP 562), so `fitplan hardware ...` does not pay for the memory model.
_LAZY = {
    "WeightFormat": "planner.formats", "get_format": "planner.formats", "list_formats": "planner.formats",
    "MemoryEstimate": "planner.memory", "MemoryTerm": "planner.memory", "estimate_memory": "planner.memory",
    "what_fits": "planner.sizing", "size_cluster": "planner.sizing",
}

__all__ = [
    "FitplanError", "InvalidConfigError", "InvalidRequestError", "MemoryEstimate", "MemoryTerm", "ModelSpec",
    "OfflineError", "ParamGroup", "ParameterBreakdown", "UnknownFormatError", "UnknownModelError", "UnsupportedError",
    "WeightFormat", "estimate_memory", "get_format", "get_model", "list_formats", "list_models", "size_cluster",
    "what_fits",
]


__getattr__ = lazy_getattr("planner", _LAZY, globals())
