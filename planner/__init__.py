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

# Imported on first use (PEP 562), so `fitplan hardware ...` does not pay for the model registry or the
# memory model, and a command can choose when its imports happen (see planner.cli.console_main).
_LAZY = {
    "ModelSpec": "planner.models", "ParameterBreakdown": "planner.models", "ParamGroup": "planner.models",
    "get_model": "planner.models", "list_models": "planner.models",
    "WeightFormat": "planner.formats", "get_format": "planner.formats", "list_formats": "planner.formats",
    "MemoryEstimate": "planner.memory", "MemoryTerm": "planner.memory", "estimate_memory": "planner.memory",
    "what_fits": "planner.sizing", "size_cluster": "planner.sizing",
    "estimate": "planner.estimate:estimate", "Estimate": "planner.estimate",
    "SpeedEstimate": "planner.speed", "CostEstimate": "planner.speed", "StepBreakdown": "planner.speed",
}

__all__ = [
    "CostEstimate", "Estimate", "SpeedEstimate", "StepBreakdown", "estimate",
    "FitplanError", "InvalidConfigError", "InvalidRequestError", "MemoryEstimate", "MemoryTerm", "ModelSpec",
    "OfflineError", "ParamGroup", "ParameterBreakdown", "UnknownFormatError", "UnknownModelError", "UnsupportedError",
    "WeightFormat", "estimate_memory", "get_format", "get_model", "list_formats", "list_models", "size_cluster",
    "what_fits",
]


__getattr__ = lazy_getattr("planner", _LAZY, globals())
