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
from planner.formats import WeightFormat, get_format, list_formats
from planner.memory import MemoryEstimate, MemoryTerm, estimate_memory
from planner.models import ModelSpec, ParameterBreakdown, ParamGroup, get_model, list_models

__all__ = [
    "FitplanError", "InvalidConfigError", "InvalidRequestError", "MemoryEstimate", "MemoryTerm", "ModelSpec",
    "OfflineError", "ParamGroup", "ParameterBreakdown", "UnknownFormatError", "UnknownModelError", "UnsupportedError",
    "WeightFormat", "estimate_memory", "get_format", "get_model", "list_formats", "list_models",
]
