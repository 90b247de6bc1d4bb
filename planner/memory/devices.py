"""Devices: resolve a GPU, check that it can run a format, and compare memory with its capacity.

Support is checked from facts: the format's vendors, its hardware feature (bf16/fp8/fp4 tensor
cores, the catalog's ``supports_*`` flags) and its minimum NVIDIA compute capability, plus whether the
chosen engine runs the format at all. A capacity-only device ("16GB") knows none of this: support is
reported as unknown (None), never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardware_db import Accelerator
from planner.formats import KVDtype, WeightFormat


def resolve_gpu(gpu: str | Accelerator | None) -> Accelerator | None:
    """An Accelerator for a catalog name, alias or capacity string ("16GB"); None stays None."""
    if gpu is None or isinstance(gpu, Accelerator):
        return gpu
    import hardware_db

    return hardware_db.get(str(gpu))


@dataclass(frozen=True)
class Support:
    """Whether a device runs a format: True, False or None (unknown), with the reason."""

    supported: bool | None
    reason: str


def _feature_reason(feature: str, acc: Accelerator) -> str | None:
    flag = {"bf16": acc.supports_bf16, "fp8": acc.supports_fp8, "fp4": acc.supports_fp4}[feature]
    if flag:
        return None
    cc = f" (compute capability {acc.compute_capability})" if acc.compute_capability else ""
    return f"{acc.name}{cc} has no {feature} support (supports_{feature} is false)"


def format_support(fmt: WeightFormat, acc: Accelerator | None, engine: str | None = None) -> Support:
    """Can ``acc`` (with ``engine``) run weights stored in ``fmt``?"""
    if engine is not None and engine not in fmt.engines:
        return Support(False, f"{fmt.name} is not run by the {engine} engine (runs on: {', '.join(fmt.engines)})")
    if acc is None:
        return Support(None, "no GPU given")
    if acc.is_generic:
        return Support(None, f"{acc.name} is a capacity-only device: format support unknown")
    vendor = acc.vendor.lower()
    if vendor not in fmt.vendors:
        return Support(False, f"{fmt.name} has no kernels for {acc.vendor} devices (runs on {', '.join(fmt.vendors)})")
    if fmt.min_compute_capability and acc.compute_capability_tuple is not None:
        if acc.compute_capability_tuple < fmt.min_compute_capability_tuple:
            return Support(False, f"{fmt.name} needs compute capability >= {fmt.min_compute_capability}; "
                                  f"{acc.name} has {acc.compute_capability}")
    if fmt.requires_feature:
        reason = _feature_reason(fmt.requires_feature, acc)
        if reason:
            return Support(False, f"{fmt.name} needs {fmt.requires_feature} tensor cores: {reason}")
    return Support(True, "supported")


def kv_dtype_support(kv: KVDtype, acc: Accelerator | None, engine: str) -> Support:
    if engine not in kv.engines:
        return Support(False, f"KV dtype {kv.name} is not offered by the {engine} engine (offered by: "
                              f"{', '.join(kv.engines)})")
    if acc is None or acc.is_generic or kv.requires_feature is None:
        return Support(None if acc is not None and acc.is_generic and kv.requires_feature else True, "")
    reason = _feature_reason(kv.requires_feature, acc)
    return Support(False, f"KV dtype {kv.name}: {reason}") if reason else Support(True, "supported")


def usable_gib(acc: Accelerator) -> float:
    """The capacity a framework can allocate on ``acc`` (after ECC / OS share), GiB."""
    return acc.memory_usable_gib


def fits_on(safe_gib: float, acc: Accelerator) -> tuple[bool, float, float]:
    """(fits, headroom GiB, headroom % of usable) when ``safe_gib`` must stay under the usable capacity."""
    usable = usable_gib(acc)
    headroom = usable - safe_gib
    return headroom >= 0, headroom, 100.0 * headroom / usable

