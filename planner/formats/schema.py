"""Typed records of the format registry (``planner/data/formats.toml``).

A :class:`WeightFormat` says how a weight is stored (bits, block scales, per-row and per-tensor
metadata), which parts of a model it leaves in 16-bit, what hardware and engines run it, and where
every number comes from. GGUF formats choose a ggml type per tensor with :class:`GGUFRule` rows.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ComputeDtype = Literal["fp32", "fp16", "bf16"]
Feature = Literal["bf16", "fp8", "fp4"]
GroupLayout = Literal["none", "flat", "input", "tile"]
Family = Literal["float", "fp8", "bnb", "gptq", "awq", "microscaling", "gguf", "hqq"]
RuleCondition = Literal[
    "always", "use_more_bits", "first_two_layers", "first_sixteenth", "n_layers_80", "n_experts_8",
    "gqa_ge_4", "model_type_falcon", "not_falcon", "not_falcon_or_more_bits",
]
ALL_VENDORS: tuple[str, ...] = ("nvidia", "amd", "intel", "apple", "google")
# Component names of ParamGroup plus "non_linear" (every embedding, norm and bare parameter tensor).
KEEPABLE = ("non_linear", "embeddings", "attention", "mlp", "experts", "shared_experts", "router", "lm_head",
            "other")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GGUFType(_Frozen):
    """A ggml tensor type: ``bytes`` per ``block`` values (type_traits in ggml.c)."""

    block: int = Field(gt=0)
    bytes: int = Field(gt=0)
    fallback: str | None = Field(None, description="type used when a row is not a multiple of the block")

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.bytes / self.block


class GGUFRule(_Frozen):
    """llama.cpp ``llama_tensor_get_type``: tensors with these roles get ``type`` when ``when`` holds."""

    roles: tuple[str, ...] = Field(min_length=1, description="ParamGroup roles, e.g. v, down, lm_head, qkv")
    type: str
    when: RuleCondition


class KernelFactor(_Frozen):
    """Decode speed of a format's kernels relative to the bandwidth roofline of its stored bytes."""

    factor: float = Field(gt=0, le=1.5)
    measured: bool
    source: str = Field(min_length=1)


class WeightFormat(_Frozen):
    """One weight storage format (see the storage formula at the top of formats.toml)."""

    name: str
    label: str
    family: Family
    aliases: tuple[str, ...] = ()
    bits: float | None = Field(None, gt=0, description="bits of each packed value (None for GGUF)")
    group_layout: GroupLayout = "none"
    group_size: int = Field(0, ge=0)
    bytes_per_group: float = Field(0, ge=0)
    nested_group_size: int = Field(0, ge=0)
    nested_bytes_per_group: float = Field(0, ge=0)
    bytes_per_row: float = Field(0, ge=0)
    bytes_per_input: float = Field(0, ge=0)
    bytes_per_tensor: float = Field(0, ge=0)
    values_per_word: int = Field(0, ge=0, description="values bit-packed into one storage word along the group "
                                 "axis (HQQ BitPack); 0 = values take bits/8 bytes each")
    word_bytes: int = Field(0, ge=0, description="bytes of one packed storage word (with values_per_word)")
    pads_partial_word: bool = Field(False, description="a group count that is not a multiple of values_per_word "
                                    "is padded (HQQ 3-bit); otherwise such a tensor cannot be packed")
    group_meta_values: int = Field(0, ge=0, description="values per group (scale, zero point) stored in the "
                                   "compute dtype of the run")
    stores_dtype_name: bool = Field(False, description="per-tensor metadata also holds the compute dtype's torch "
                                    "name as one byte per character (HQQ encode_safetensor_type)")
    group_size_variants: tuple[int, ...] = Field((), description="other group sizes, named <name>-g<size>")
    compute_dtype: ComputeDtype
    matmul_dtype: str = Field(description="dtype whose peak TFLOPS the prefill GEMMs run at")
    keep_unquantized: tuple[str, ...] = ()
    unquantized_dtype: str = "compute"
    unties_tied_lm_head: bool = False
    unties_tied_lm_head_source: str = ""
    prefill_dequantizes: Literal["point", "upper"] | None = Field(
        None, description="prefill matmuls dequantize one weight to 16-bit (point) or may (upper bound only)")
    prefill_dequant_source: str = ""
    load_transient_bytes_per_param: float = Field(0, ge=0)
    load_transient_source: str = ""
    requires_feature: Feature | None = None
    min_compute_capability: str | None = Field(None, pattern=r"^\d+\.\d+$")
    vendors: tuple[str, ...] = ALL_VENDORS
    engines: tuple[str, ...] = Field(min_length=1)
    checkpoint_quant_methods: tuple[str, ...] = ()
    gguf_base_type: str | None = None
    gguf_rules: tuple[GGUFRule, ...] = ()
    decode_speed: dict[str, KernelFactor] = Field(default_factory=dict,
                                                  description="per engine: fraction of the 16-bit bandwidth efficiency")
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> WeightFormat:
        if self.family == "gguf":
            if not self.gguf_base_type:
                raise ValueError(f"{self.name}: a GGUF format needs gguf_base_type")
        elif self.bits is None:
            raise ValueError(f"{self.name}: bits is required")
        if self.group_layout != "none" and self.group_size <= 0:
            raise ValueError(f"{self.name}: group_layout {self.group_layout!r} needs a positive group_size")
        if bool(self.values_per_word) != bool(self.word_bytes):
            raise ValueError(f"{self.name}: values_per_word and word_bytes go together")
        if self.group_size_variants and self.group_layout == "none":
            raise ValueError(f"{self.name}: group_size_variants needs a group_layout")
        if bool(self.nested_group_size) != bool(self.nested_bytes_per_group):
            raise ValueError(f"{self.name}: nested_group_size and nested_bytes_per_group go together")
        unknown = set(self.keep_unquantized) - set(KEEPABLE)
        if unknown:
            raise ValueError(f"{self.name}: keep_unquantized has unknown parts {sorted(unknown)}; allowed {KEEPABLE}")
        if self.unquantized_dtype not in ("compute", "fp32", "fp16", "bf16"):
            raise ValueError(f"{self.name}: unquantized_dtype must be compute, fp32, fp16 or bf16")
        if self.unties_tied_lm_head and not self.unties_tied_lm_head_source:
            raise ValueError(f"{self.name}: unties_tied_lm_head needs unties_tied_lm_head_source")
        missing = [e for e in self.engines if e not in self.decode_speed]
        extra = [e for e in self.decode_speed if e not in self.engines]
        if missing or extra:
            raise ValueError(f"{self.name}: decode_speed must cover exactly its engines (missing {missing}, extra {extra})")
        if self.prefill_dequantizes and not self.prefill_dequant_source:
            raise ValueError(f"{self.name}: prefill_dequantizes needs prefill_dequant_source")
        if self.load_transient_bytes_per_param and not self.load_transient_source:
            raise ValueError(f"{self.name}: load_transient_bytes_per_param needs load_transient_source")
        return self

    @property
    def is_quantized(self) -> bool:
        """True for every format that stores weights below the compute dtype's 16/32 bits."""
        return self.family != "float"

    @property
    def unquantized_dtype_resolved(self) -> str:
        return self.compute_dtype if self.unquantized_dtype == "compute" else self.unquantized_dtype

    @property
    def min_compute_capability_tuple(self) -> tuple[int, int] | None:
        if self.min_compute_capability is None:
            return None
        major, minor = self.min_compute_capability.split(".")
        return int(major), int(minor)


class KVDtype(_Frozen):
    """A KV-cache element type."""

    name: str
    aliases: tuple[str, ...] = ()
    bytes_per_element: float = Field(gt=0)
    requires_feature: Feature | None = None
    engines: tuple[str, ...] = Field(min_length=1)
    source: str = Field(min_length=1)


class FormatCatalog(_Frozen):
    """The whole formats.toml file."""

    schema_version: int
    ambiguous: dict[str, tuple[str, ...]]
    dtype_bytes: dict[str, float]
    formats: dict[str, WeightFormat]
    gguf_types: dict[str, GGUFType]
    kv_dtypes: dict[str, KVDtype]

    @model_validator(mode="after")
    def _check_references(self) -> FormatCatalog:
        for fmt in self.formats.values():
            types = [fmt.gguf_base_type] if fmt.gguf_base_type else []
            types += [rule.type for rule in fmt.gguf_rules]
            for name in types:
                if name not in self.gguf_types:
                    raise ValueError(f"{fmt.name}: unknown ggml type {name!r}")
            for dtype in (fmt.compute_dtype, fmt.unquantized_dtype_resolved):
                if dtype not in self.dtype_bytes:
                    raise ValueError(f"{fmt.name}: dtype {dtype!r} has no entry in [dtype_bytes]")
        for gtype in self.gguf_types.values():
            if gtype.fallback and gtype.fallback not in self.gguf_types:
                raise ValueError(f"unknown fallback ggml type {gtype.fallback!r}")
        for alias, targets in self.ambiguous.items():
            missing = [t for t in targets if t not in self.formats]
            if missing:
                raise ValueError(f"ambiguous name {alias!r} lists unknown formats {missing}")
        return self
