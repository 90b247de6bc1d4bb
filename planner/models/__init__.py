"""Model specifications: the built-in registry, config.json parsing and exact parameter accounting."""

from planner.models.registry import RegistryEntry, all_names, registry_entries
from planner.models.resolve import get_model
from planner.models.spec import (
    AttentionSpec,
    EmbeddingSpec,
    MLASpec,
    MLPSpec,
    ModelSpec,
    MoESpec,
    NormSpec,
    ParameterBreakdown,
    ParamGroup,
)

__all__ = [
    "AttentionSpec", "EmbeddingSpec", "MLASpec", "MLPSpec", "ModelSpec", "MoESpec", "NormSpec",
    "ParamGroup", "ParameterBreakdown", "RegistryEntry", "all_names", "get_model", "list_models",
    "registry_entries",
]


def list_models() -> list[ModelSpec]:
    """The spec of every built-in registry model."""
    from planner.models.resolve import registry_spec

    return [registry_spec(name) for name in all_names()]
