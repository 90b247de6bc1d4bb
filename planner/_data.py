"""Read the planner's versioned TOML data files (``planner/data/*.toml``)."""

from __future__ import annotations

import sys
from importlib import resources
from typing import Any

from planner.errors import InvalidConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_data_toml(filename: str, schema_version: int) -> dict[str, Any]:
    """Parse ``planner/data/<filename>`` and check its ``schema_version``."""
    text = (resources.files("planner") / "data" / filename).read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InvalidConfigError(f"{filename}: not valid TOML ({error}).") from None
    if raw.get("schema_version") != schema_version:
        raise InvalidConfigError(f"{filename}: schema_version {raw.get('schema_version')!r} is not {schema_version}.")
    return raw
