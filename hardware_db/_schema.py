"""The typed record for one accelerator: :class:`Accelerator`.

Every number carries its unit in the field name. Speeds are **dense** peaks (no 2:4 sparsity) in
TFLOPS (int8 in TOPS); ``None`` means "not supported or not published", never a guess. Memory comes
twice: ``memory_gb`` as marketed and ``memory_usable_gib`` as the capacity a framework can allocate
before its own reserves (after inline ECC, or the macOS GPU share on unified memory), with the rule
used in ``memory_usable_basis``.

The model is frozen and rejects unknown fields, so a typo in a data file is an error, not a silently
ignored key. Cross-field checks (a dtype with TFLOPS must have its support flag; NVIDIA format support
must match the compute capability) catch data errors at load time.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware_db.names import did_you_mean

GIB_BYTES = 1024**3

# dtype -> field holding its dense peak. int8 is in TOPS, the others in TFLOPS.
PEAK_FIELDS: dict[str, str] = {
    "fp32": "fp32_tflops",
    "tf32": "tf32_tflops",
    "fp16": "fp16_tflops",
    "bf16": "bf16_tflops",
    "fp8": "fp8_tflops",
    "int8": "int8_tops",
    "fp4": "fp4_tflops",
}

# dtype -> the flag that must be true when its TFLOPS are given.
_FLAGGED_DTYPES: dict[str, str] = {"bf16": "supports_bf16", "fp8": "supports_fp8", "fp4": "supports_fp4"}

# Lowest NVIDIA compute capability with tensor-core support for each feature: bf16/tf32 and 2:4 sparse
# tensor cores from Ampere (8.0), fp8 from Ada/Hopper (8.9), fp4 from Blackwell (10.0).
# Source: ../shared/research/SIZING.md section (e) item 6 (SM80/SM89/SM100 gates).
_NVIDIA_MIN_CC: dict[str, tuple[int, int]] = {
    "tf32_tflops": (8, 0),
    "bf16_tflops": (8, 0),
    "supports_bf16": (8, 0),
    "supports_sparse_2_4": (8, 0),
    "fp8_tflops": (8, 9),
    "supports_fp8": (8, 9),
    "fp4_tflops": (10, 0),
    "supports_fp4": (10, 0),
}

# Facts whose absence `missing_fields()` reports (speed, power and price).
_SPEED_AND_PRICE_FIELDS: tuple[str, ...] = (
    "memory_bandwidth_gbps",
    *PEAK_FIELDS.values(),
    "tdp_w",
    "launch_price_usd",
    "cloud_usd_per_hour",
)

_DATE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01]))?$")

# An optional positive number (None = unknown or not supported).
OptionalPositive = Annotated[float, Field(gt=0)] | None


class Accelerator(BaseModel):
    """One accelerator (GPU, TPU chip, Gaudi, Apple SoC) with sourced specs.

    Required: identity, marketed and usable memory (with the rule used), feature flags, node size,
    ``source`` and ``verified``. Optional facts default to ``None`` = unknown or not supported.
    """

    # defer_build: the validator is built on first use, keeping `import hardware_db` light.
    # allow_inf_nan=False: a catalog file with memory_gb = inf (TOML has inf/nan literals) would make
    # every model fit; no accelerator number is infinite or NaN.
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True, defer_build=True,
                              allow_inf_nan=False)

    # Identity
    name: str = Field(min_length=1, description="canonical name, e.g. 'NVIDIA H100 SXM'")
    aliases: tuple[str, ...] = Field(default=(), description="other spellings that resolve to this entry")
    vendor: str = Field(min_length=1)
    architecture: str = Field(min_length=1)
    compute_capability: str | None = Field(default=None, pattern=r"^\d+\.\d+$",
                                           description='NVIDIA SM version, e.g. "8.9"; None for other vendors')

    # Memory
    memory_gb: float = Field(gt=0, description="capacity as marketed (vendors' device-memory GB are binary)")
    memory_usable_gib: float = Field(gt=0, description="capacity a framework can allocate, GiB")
    memory_usable_basis: str = Field(min_length=1, description="how memory_usable_gib was determined")
    memory_type: str | None = None
    memory_kind: Literal["dedicated", "unified"]
    ecc: bool | None = None
    memory_bandwidth_gbps: float | None = Field(default=None, gt=0, description="peak DRAM bandwidth, GB/s")

    # Dense peak throughput (no sparsity)
    fp32_tflops: OptionalPositive = None
    tf32_tflops: OptionalPositive = None
    fp16_tflops: OptionalPositive = None
    bf16_tflops: OptionalPositive = None
    fp8_tflops: OptionalPositive = None
    int8_tops: OptionalPositive = None
    fp4_tflops: OptionalPositive = None

    # Feature flags (tensor/matrix-unit support)
    supports_bf16: bool
    supports_fp8: bool
    supports_fp4: bool
    supports_sparse_2_4: bool

    # Platform
    tdp_w: OptionalPositive = None
    interconnect: str | None = None
    form_factor: str | None = None
    gpus_per_node: int = Field(ge=1, description="largest usual single-node / NVLink-domain count (bounds tensor parallel)")
    release_year: int | None = Field(default=None, ge=1990, le=2100)

    # Prices
    launch_price_usd: OptionalPositive = None
    cloud_usd_per_hour: float | None = Field(default=None, gt=0, description="on-demand $ per GPU-hour")
    cloud_provider: str | None = None
    cloud_price_date: str | None = Field(default=None, description='"YYYY-MM" or "YYYY-MM-DD"')
    cloud_price_source: str | None = None

    # Provenance
    source: str = Field(min_length=1, description="where the spec numbers come from")
    notes: str = ""
    verified: bool = Field(description="False when key numbers are derived, recalled or weakly sourced")
    is_generic: bool = False

    @model_validator(mode="after")
    def _check_consistency(self) -> Accelerator:
        for dtype, flag in _FLAGGED_DTYPES.items():
            if getattr(self, PEAK_FIELDS[dtype]) is not None and not getattr(self, flag):
                raise ValueError(f"{PEAK_FIELDS[dtype]} is given, so {flag} must be true")
        if self.memory_usable_gib > self.memory_gb:
            raise ValueError(
                f"memory_usable_gib ({self.memory_usable_gib}) exceeds memory_gb ({self.memory_gb}); "
                "device-memory GB are binary, so usable GiB can only be equal or lower"
            )
        if self.cloud_price_date is not None and not _DATE.match(self.cloud_price_date):
            raise ValueError(f"cloud_price_date {self.cloud_price_date!r} must look like YYYY-MM or YYYY-MM-DD")
        if self.cloud_usd_per_hour is not None and not (self.cloud_provider and self.cloud_price_source):
            raise ValueError("cloud_usd_per_hour needs cloud_provider and cloud_price_source")
        self._check_compute_capability()
        return self

    def _check_compute_capability(self) -> None:
        is_nvidia = self.vendor.lower() == "nvidia"
        if self.compute_capability is None:
            return
        if not is_nvidia:
            raise ValueError(f"compute_capability is NVIDIA-only, but vendor is {self.vendor!r}")
        cc = self.compute_capability_tuple
        for field, minimum in _NVIDIA_MIN_CC.items():
            if getattr(self, field) not in (None, False) and cc < minimum:
                raise ValueError(
                    f"{field} is set, but NVIDIA parts need compute capability >= "
                    f"{minimum[0]}.{minimum[1]} for it (this entry has {self.compute_capability})"
                )

    @property
    def compute_capability_tuple(self) -> tuple[int, int] | None:
        """``"8.9"`` -> ``(8, 9)``, for comparisons such as ``cc >= (8, 9)``; None when unknown/not NVIDIA."""
        if self.compute_capability is None:
            return None
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def memory_usable_bytes(self) -> int:
        """Usable capacity in bytes (``memory_usable_gib * 2**30``, rounded to a byte)."""
        return round(self.memory_usable_gib * GIB_BYTES)

    def peak_tflops(self, dtype: str) -> float | None:
        """Dense peak for ``dtype`` (TFLOPS; TOPS for int8), or None when unsupported or unknown.

        ``dtype`` is one of fp32, tf32, fp16, bf16, fp8, int8, fp4 (case-insensitive).
        """
        key = dtype.strip().lower()
        if key not in PEAK_FIELDS:
            raise ValueError(
                f"unknown dtype {dtype!r}; expected one of {', '.join(PEAK_FIELDS)}."
                + did_you_mean(dtype, PEAK_FIELDS)
            )
        return getattr(self, PEAK_FIELDS[key])

    def missing_fields(self) -> list[str]:
        """Names of the speed, power and price facts that are unknown for this entry.

        A dtype the part is known not to support (its ``supports_*`` flag is false on a catalog entry)
        is "not supported", not unknown, and is left out. A generic capacity-only device knows nothing
        beyond its memory, so its feature flags are listed as unknown too.
        """
        unsupported = set()
        if not self.is_generic:
            unsupported = {PEAK_FIELDS[d] for d, flag in _FLAGGED_DTYPES.items() if not getattr(self, flag)}
        missing = [f for f in _SPEED_AND_PRICE_FIELDS if getattr(self, f) is None and f not in unsupported]
        if self.is_generic:
            missing += [*_FLAGGED_DTYPES.values(), "supports_sparse_2_4"]
        return missing
