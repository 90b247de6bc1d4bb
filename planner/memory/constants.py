"""The named, sourced constants of the memory model (``planner/data/memory_constants.toml``)."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner._data import read_data_toml

_UNIT_BYTES = {"MiB": 2**20, "MB": 1e6, "GiB": 2**30, "bytes": 1}


class Constant(BaseModel):
    """One named constant: a point value, an optional upper bound, its unit and source."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str
    value: float
    upper: float | None = None
    unit: Literal["MiB", "MB", "GiB", "bytes", "tokens", "fraction", "count"]
    source: str = Field(min_length=1)

    @property
    def bytes(self) -> float:
        """The point value in bytes (memory constants only)."""
        return self.value * _UNIT_BYTES[self.unit]

    @property
    def upper_bytes(self) -> float:
        """The upper bound in bytes (the point value when no upper bound is given)."""
        return (self.upper if self.upper is not None else self.value) * _UNIT_BYTES[self.unit]


@cache
def _constants() -> dict[str, Constant]:
    raw = read_data_toml("memory_constants.toml", 1)
    return {name: Constant(name=name, **entry) for name, entry in raw["constants"].items()}


def constant(name: str) -> Constant:
    """The constant called ``name`` (a KeyError here is a programming error, not user input)."""
    return _constants()[name]

