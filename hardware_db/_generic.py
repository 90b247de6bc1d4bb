"""Generic devices from a capacity string ("16GB", "24 GiB", "80G").

"Will it fit on a 16 GB card?" needs only the capacity, so a capacity string gives an
:class:`Accelerator` with ``is_generic=True`` whose speed, power and price are ``None`` (reported by
``missing_fields()``), never invented. GPU vendors' "GB" on device memory is binary (a 24 GB card has
24 GiB of DRAM), so "GB" and "G" are read as GiB, like "GiB"; "T"/"TB"/"TiB" are 1024 GiB.
"""

from __future__ import annotations

import functools
import re

from hardware_db._errors import CatalogError
from hardware_db._schema import Accelerator

# Sizes above this are certainly a typo (the largest single device is well below 1 TiB).
MAX_CAPACITY_GIB = 100 * 1024

_CAPACITY = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(gib|gb|g|tib|tb|t)\s*$", re.IGNORECASE)
_GIB_PER_UNIT = {"g": 1, "gb": 1, "gib": 1, "t": 1024, "tb": 1024, "tib": 1024}


def parse_capacity_gib(text: str) -> float | None:
    """Capacity in GiB for strings like "16GB" or "7.5 GiB"; None when ``text`` is not capacity-shaped.

    Raises :class:`CatalogError` for zero, negative or absurd (> 100 TiB) sizes.
    """
    match = _CAPACITY.match(text)
    if match is None:
        return None
    number, unit = float(match.group(1)), match.group(2).lower()
    gib = number * _GIB_PER_UNIT[unit]
    if gib <= 0:
        raise CatalogError(f"capacity {text.strip()!r} must be positive, e.g. '16GB'")
    if gib > MAX_CAPACITY_GIB:
        raise CatalogError(f"capacity {text.strip()!r} is larger than {MAX_CAPACITY_GIB // 1024} TiB; "
                           "give the memory of one device, e.g. '80GB'")
    return gib


@functools.lru_cache(maxsize=64)
def generic_device(text: str) -> Accelerator | None:
    """An ``is_generic`` accelerator for a capacity string, or None if ``text`` is not one."""
    gib = parse_capacity_gib(text)
    if gib is None:
        return None
    unit = _CAPACITY.match(text).group(2).lower()
    reading = ("given in binary units" if unit.endswith("ib") else
               f"'{unit.upper()}' read as binary, as GPU vendors use it for device memory ({gib:g} GB -> {gib:g} GiB)")
    return Accelerator(
        name=f"Generic {gib:g} GiB GPU",
        vendor="generic",
        architecture="unknown",
        memory_gb=gib,
        memory_usable_gib=gib,
        memory_usable_basis=f"capacity {text.strip()!r} from the user, {reading}; no ECC or OS share subtracted",
        memory_kind="dedicated",
        supports_bf16=False,
        supports_fp8=False,
        supports_fp4=False,
        supports_sparse_2_4=False,
        gpus_per_node=1,
        source=f"user-supplied capacity {text.strip()!r}",
        notes=("Capacity-only device: bandwidth, TFLOPS, format support, power and prices are unknown "
               "(see missing_fields()); the support flags are false because nothing is known, not because "
               "the formats are unsupported. gpus_per_node 1: one device of this size."),
        verified=False,
        is_generic=True,
    )
