"""fitplan's planner: model specs, precision formats, the memory/speed/cost model and the CLI.

Never imports torch: everything here works from config.json facts and data files.
"""

from planner.errors import (
    FitplanError,
    InvalidConfigError,
    InvalidRequestError,
    OfflineError,
    UnknownModelError,
    UnsupportedError,
)
from planner.models import ModelSpec, ParameterBreakdown, ParamGroup, get_model, list_models

__all__ = [
    "FitplanError", "InvalidConfigError", "InvalidRequestError", "ModelSpec", "OfflineError",
    "ParamGroup", "ParameterBreakdown", "UnknownModelError", "UnsupportedError", "get_model", "list_models",
]
