"""The precision-format registry: how each weight format is stored and what it needs.

Formats are data (``planner/data/formats.toml``); this package loads them, looks names up
(:func:`get_format`, :func:`get_kv_dtype`) and computes exact storage (:mod:`planner.formats.storage`).
"""

from planner.formats.registry import (
    dtype_bytes,
    format_catalog,
    format_names,
    get_format,
    group_size_variant_names,
    get_kv_dtype,
    list_formats,
)
from planner.formats.schema import GGUFRule, GGUFType, KVDtype, WeightFormat

__all__ = [
    "GGUFRule", "GGUFType", "KVDtype", "WeightFormat", "dtype_bytes", "format_catalog", "format_names",
    "get_format", "group_size_variant_names", "get_kv_dtype", "list_formats",
]
