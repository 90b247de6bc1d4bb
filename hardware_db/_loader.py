"""Read catalog TOML files into validated :class:`Accelerator` records.

A file holds ``schema_version = 1`` and an array of ``[[accelerator]]`` tables. Any problem raises
:class:`CatalogError` naming the file, the entry (1-based index and name) and the field, with
pydantic's reason, e.g. ``hw.toml: accelerator #3 ('My GPU'): field 'memory_gb': Input should be a
valid number``. The built-in files ship in ``hardware_db/data`` and are parsed once per process.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hardware_db._errors import CatalogError
from hardware_db._schema import Accelerator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SCHEMA_VERSION = 1
_TOP_LEVEL_KEYS = {"schema_version", "accelerator"}


def parse_entry(data: Mapping[str, Any], where: str) -> Accelerator:
    """Validate one entry; ``where`` prefixes the error (e.g. ``"hw.toml: accelerator #3 ('X')"``)."""
    try:
        return Accelerator.model_validate(data)
    except ValidationError as error:
        raise CatalogError(f"{where}: {format_validation_error(error)}") from None


def format_validation_error(error: ValidationError) -> str:
    """One line per problem: ``field 'memory_gb': Input should be a valid number``."""
    parts = []
    for problem in error.errors(include_url=False):
        location = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        parts.append(f"field {location!r}: {message}" if location else message)
    return "; ".join(parts)


def parse_document(document: Mapping[str, Any], label: str) -> list[Accelerator]:
    """Validate a parsed TOML document; ``label`` names the file in error messages."""
    unknown = set(document) - _TOP_LEVEL_KEYS
    if unknown:
        raise CatalogError(f"{label}: unknown top-level key(s) {sorted(unknown)}; expected "
                           "'schema_version' and [[accelerator]] tables")
    version = document.get("schema_version")
    if version is None:
        raise CatalogError(f"{label}: missing 'schema_version' (this fitplan reads {SCHEMA_VERSION})")
    if version != SCHEMA_VERSION:
        raise CatalogError(f"{label}: unsupported schema_version {version!r} "
                           f"(this fitplan reads {SCHEMA_VERSION})")
    tables = document.get("accelerator", [])
    if not isinstance(tables, list):
        raise CatalogError(f"{label}: 'accelerator' must be an array of tables ([[accelerator]])")
    entries = []
    for index, table in enumerate(tables, start=1):
        if not isinstance(table, dict):
            raise CatalogError(f"{label}: accelerator #{index} is not a table")
        where = f"{label}: accelerator #{index} ({table.get('name', '<no name>')!r})"
        entries.append(parse_entry(table, where))
    return entries


def parse_text(text: str, label: str) -> list[Accelerator]:
    """Parse TOML text (``label`` names it in errors)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(f"{label}: invalid TOML: {error}") from None
    return parse_document(document, label)


def load_file(path: str | Path) -> list[Accelerator]:
    """Load one user TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"hardware file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(f"cannot read hardware file {path}: {error}") from None
    return parse_text(text, str(path))


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Turn files and directories (of ``*.toml``, sorted) into a file list; missing paths are errors."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            files.extend(sorted(path.glob("*.toml")))
        elif path.is_file():
            files.append(path)
        else:
            raise CatalogError(f"hardware file not found: {path}")
    return files


@functools.cache
def builtin_entries() -> tuple[Accelerator, ...]:
    """Every entry of the shipped data files, in file-name order (parsed once per process)."""
    data = resources.files("hardware_db") / "data"
    entries: list[Accelerator] = []
    for item in sorted(data.iterdir(), key=lambda item: item.name):
        if item.name.endswith(".toml"):
            entries.extend(parse_text(item.read_text(encoding="utf-8"), f"hardware_db/data/{item.name}"))
    return tuple(entries)
