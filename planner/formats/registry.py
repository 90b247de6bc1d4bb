"""Load ``planner/data/formats.toml`` once and look formats up by name or alias.

Lookups ignore case, spaces and ``_`` vs ``-`` ("Q4_K_M" finds ``gguf-q4_k_m``). A name that means
several formats ("int4") is an error listing them; an unknown name is an error with close matches.
A format with ``group_size_variants`` also answers to ``<name>-g<size>`` for each listed size
("hqq-int4-g32" = hqq-int4 with groups of 32), a copy that differs only in name and group size.
"""

from __future__ import annotations

import re
from functools import cache

from planner._data import read_data_toml
from planner.errors import InvalidConfigError, InvalidRequestError, UnknownFormatError
from planner.formats.schema import FormatCatalog, KVDtype, WeightFormat

SCHEMA_VERSION = 1
_SEPARATORS = re.compile(r"[\s_]+")
_GROUP_SUFFIX = re.compile(r"^(?P<base>.+)-g(?P<size>\d+)$")


def _key(name: str) -> str:
    return _SEPARATORS.sub("-", name.strip().lower())


@cache
def format_catalog() -> FormatCatalog:
    """The parsed, validated formats.toml (cached)."""
    raw = read_data_toml("formats.toml", SCHEMA_VERSION)
    raw["formats"] = {name: {"name": name, **entry} for name, entry in raw.get("formats", {}).items()}
    raw["kv_dtypes"] = {name: {"name": name, **entry} for name, entry in raw.get("kv_dtypes", {}).items()}
    return FormatCatalog.model_validate(raw)


@cache
def _format_index() -> dict[str, str]:
    catalog = format_catalog()
    index: dict[str, str] = {}
    for fmt in catalog.formats.values():
        for label in (fmt.name, *fmt.aliases):
            key = _key(label)
            if key in index and index[key] != fmt.name:
                raise InvalidConfigError(f"formats.toml: {label!r} names both {index[key]} and {fmt.name}.")
            if key in {_key(a) for a in catalog.ambiguous}:
                raise InvalidConfigError(f"formats.toml: {label!r} is listed as ambiguous and as an alias of {fmt.name}.")
            index[key] = fmt.name
    return index


def format_names() -> list[str]:
    """Canonical names of every weight format, in file order."""
    return list(format_catalog().formats)


def group_size_variant_names() -> list[str]:
    """Names of the group-size variants (``<name>-g<size>``) of the formats that have them."""
    return [f"{fmt.name}-g{size}" for fmt in format_catalog().formats.values() for size in fmt.group_size_variants]


def _group_size_variant(key: str) -> WeightFormat | None:
    match = _GROUP_SUFFIX.match(key)
    if match is None:
        return None
    base_name = _format_index().get(match["base"])
    if base_name is None:
        return None
    base = format_catalog().formats[base_name]
    size = int(match["size"])
    if size not in base.group_size_variants:
        return None
    return base.model_copy(update={"name": f"{base.name}-g{size}", "group_size": size, "aliases": (),
                                   "label": f"{base.label.split(',')[0]}, group {size}"})


def get_format(name: str | WeightFormat) -> WeightFormat:
    """The format called ``name`` (canonical name or alias)."""
    if isinstance(name, WeightFormat):
        return name
    if isinstance(name, str):
        return _format_by_name(name)
    raise UnknownFormatError(f"a precision must be a format name, got {type(name).__name__}.")


@cache
def _format_by_name(name: str) -> WeightFormat:
    if not name.strip():
        raise UnknownFormatError(f"a precision must be a non-empty format name, got {name!r}. "
                                 f"Known: {', '.join(format_names())}.")
    catalog = format_catalog()
    key = _key(name)
    for alias, targets in catalog.ambiguous.items():
        if _key(alias) == key:
            options = "; ".join(f"{t} ({catalog.formats[t].label})" for t in targets)
            raise InvalidRequestError(f"precision {name!r} is ambiguous: it can mean {options}. Pass one of these names.")
    canonical = _format_index().get(key)
    if canonical is None:
        variant = _group_size_variant(key)
        if variant is not None:
            return variant
        from hardware_db.names import did_you_mean

        labels = [label for f in catalog.formats.values() for label in (f.name, *f.aliases)]
        labels += group_size_variant_names()
        raise UnknownFormatError(f"unknown precision {name!r}.{did_you_mean(name, labels)} "
                                 f"Known formats: {', '.join(format_names())}.")
    return catalog.formats[canonical]


def list_formats() -> list[WeightFormat]:
    """Every weight format, in file order."""
    return list(format_catalog().formats.values())


def get_kv_dtype(name: str | KVDtype) -> KVDtype:
    """The KV-cache dtype called ``name`` (fp16, bf16, fp32, fp8, int8, int4 or an alias)."""
    if isinstance(name, KVDtype):
        return name
    return _kv_dtype_by_name(str(name))


@cache
def _kv_dtype_by_name(name: str) -> KVDtype:
    catalog = format_catalog()
    key = _key(str(name))
    for dtype in catalog.kv_dtypes.values():
        if key in {_key(label) for label in (dtype.name, *dtype.aliases)}:
            return dtype
    from hardware_db.names import did_you_mean

    labels = [label for d in catalog.kv_dtypes.values() for label in (d.name, *d.aliases)]
    raise UnknownFormatError(f"unknown KV-cache dtype {name!r}.{did_you_mean(str(name), labels)} "
                             f"Known: {', '.join(catalog.kv_dtypes)}.")


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of a plain dtype (fp32, fp16, bf16, fp8)."""
    table = format_catalog().dtype_bytes
    if dtype not in table:
        raise InvalidConfigError(f"no byte size for dtype {dtype!r}; known {sorted(table)}.")
    return table[dtype]
