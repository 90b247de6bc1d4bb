"""The accelerator catalog: sourced data files, a typed loader and name lookup.

>>> import hardware_db
>>> hardware_db.get("rtx 4090").memory_usable_gib
24.0
>>> hardware_db.get("16GB").missing_fields()[:2]
['memory_bandwidth_gbps', 'fp32_tflops']

The data lives in ``hardware_db/data/*.toml`` (one file per vendor family, ``schema_version = 1``).
Users add or override entries with ``register()``, ``load_user_files()`` or the ``FITPLAN_HARDWARE``
environment variable (an ``os.pathsep``-separated list of TOML files or directories). This package
imports only pydantic and the standard library.
"""

from hardware_db._catalog import (
    ENV_VAR,
    all_names,
    get,
    list,  # noqa: A004 - hardware_db.list(...) is the public API; the builtin is untouched elsewhere
    load_user_files,
    register,
    reset,
    vendors,
)
from hardware_db._errors import AmbiguousAcceleratorError, CatalogError, UnknownAcceleratorError
from hardware_db._loader import SCHEMA_VERSION
from hardware_db._schema import PEAK_FIELDS, Accelerator

__all__ = [
    "ENV_VAR",
    "PEAK_FIELDS",
    "SCHEMA_VERSION",
    "Accelerator",
    "AmbiguousAcceleratorError",
    "CatalogError",
    "UnknownAcceleratorError",
    "all_names",
    "get",
    "list",
    "load_user_files",
    "register",
    "reset",
    "vendors",
]
