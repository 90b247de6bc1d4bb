"""Exact storage of sparse weights, and where sparsity saves memory or time (data: ``sparsity.toml``).

Only the Linear layers of the transformer blocks are sparsified (attention, MLP, experts); embeddings,
lm_head and routers stay dense. Per tensor of shape (out, in), in the weight format ``fmt``:

- **2:4 / 4:8** (semi-structured): the compressed matrix ``(out, in/2)`` in ``fmt`` (its own group
  scales: ``planner.formats.storage.linear_bytes``) plus 2 bits of metadata per kept value
  (``out * in / 8`` bytes); the bias is unchanged. A tensor whose ``in`` is not a multiple of 4 stays
  dense. Speed: only an engine with a 2:4 kernel for ``fmt`` on a GPU with sparse tensor cores reads
  the compressed bytes (decode speeds up); elsewhere the saving is memory only.
- **unstructured** (level ``s``, density ``d = 1 - s``): the ``sparse-bitmask`` format:
  ``out * in / 8`` (bitmask) ``+ round(d * out * in)`` values ``+ 4 * out`` (int32 row offsets).
  It pays only below the break-even density ``d* = 1 - 1/b - 32/(in * b)`` (``b`` bits per value:
  0.9375 in bf16, 0.875 in fp8) and only for unpacked formats (float, fp8). No engine keeps it in GPU
  memory (they densify at load), so on the GPU unstructured sparsity saves nothing and runs no faster
  on dense kernels: the saving is on disk (``stored_bytes``).
- Structured patterns (heads, ffn, layers) change the architecture instead: ``planner.models.derive``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel, ConfigDict, Field

from planner._data import read_data_toml
from planner.formats import WeightFormat
from planner.formats.storage import group_storage, linear_bytes
from planner.models.spec import ModelSpec, ParamGroup
from planner.strategy import SparsitySpec

SPARSIFIED_COMPONENTS = ("attention", "mlp", "experts", "shared_experts")
SEMI_STRUCTURED = ("2:4", "4:8")


class Kernel24(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str
    formats: tuple[str, ...]
    min_compute_capability: str = Field(pattern=r"^\d+\.\d+$")
    source: str = Field(min_length=1)


class SparsityData(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    semi_metadata_bits: float
    semi_in_multiple: int
    semi_source: str
    bitmask_bits: float
    bitmask_row_offset_bytes: float
    bitmask_families: tuple[str, ...]
    bitmask_resident_engines: tuple[str, ...]
    bitmask_source: str
    kernels: tuple[Kernel24, ...]


@cache
def sparsity_data() -> SparsityData:
    raw = read_data_toml("sparsity.toml", 1)
    semi, bitmask = raw["semi_structured"], raw["bitmask"]
    return SparsityData(
        semi_metadata_bits=semi["metadata_bits_per_kept_value"], semi_in_multiple=semi["in_features_multiple"],
        semi_source=semi["source"], bitmask_bits=bitmask["bits_per_element"],
        bitmask_row_offset_bytes=bitmask["row_offset_bytes"], bitmask_families=tuple(bitmask["families"]),
        bitmask_resident_engines=tuple(bitmask["resident_in_engines"]), bitmask_source=bitmask["source"],
        kernels=tuple(Kernel24(**k) for k in raw["kernels_2_4"]))


@dataclass(frozen=True)
class SparseStorage:
    """Weight bytes of a model (all devices) with a non-structured sparsity pattern.

    ``dense_bytes``: every weight in ``fmt`` without sparsity; ``stored_bytes``: in the sparse format
    (on disk); ``resident_bytes``: held in GPU memory by the engine; ``read_bytes_delta``: change of
    the bytes one decode step reads (negative = faster, only with a 2:4 kernel).
    """

    pattern: str
    storage_format: str
    dense_bytes: float
    stored_bytes: float
    resident_bytes: float
    read_bytes_delta: float
    pays: bool
    break_even_density: float | None
    kernel: bool
    note: str


def _targets(spec: ModelSpec) -> list[ParamGroup]:
    return [g for g in spec.param_groups if g.kind == "linear" and g.layers and g.component in SPARSIFIED_COMPONENTS]


def semi_structured_bytes(fmt: WeightFormat, out_features: int, in_features: int) -> float:
    """Bytes of one 2:4 weight matrix (no bias): half the columns in ``fmt`` plus 2-bit indices."""
    data = sparsity_data()
    kept = out_features * in_features / 2
    return linear_bytes(fmt, out_features, in_features // 2) + kept * data.semi_metadata_bits / 8


def bitmask_bytes(value_bits: float, out_features: int, in_features: int, density: float) -> float:
    """Bytes of one weight matrix (no bias) in the sparse-bitmask format at ``density`` kept."""
    data = sparsity_data()
    n = out_features * in_features
    kept = round(density * n)
    return n * data.bitmask_bits / 8 + kept * value_bits / 8 + out_features * data.bitmask_row_offset_bytes


def bitmask_break_even(value_bits: float, in_features: int) -> float:
    """Density below which the bitmask format is smaller than dense: ``1 - 1/b - 32/(in b)``."""
    data = sparsity_data()
    return 1 - data.bitmask_bits / value_bits - 8 * data.bitmask_row_offset_bytes / (in_features * value_bits)


def kernel_2_4(fmt: WeightFormat, engine: str, acc) -> tuple[bool, str]:
    """Whether ``engine`` runs 2:4 matmuls for ``fmt`` on ``acc``, and why (not)."""
    if acc is None or acc.is_generic:
        return False, "no GPU model given: no sparse tensor cores assumed"
    if not getattr(acc, "supports_sparse_2_4", False):
        return False, f"{acc.name} has no 2:4 sparse tensor cores"
    cc = acc.compute_capability_tuple
    for kernel in sparsity_data().kernels:
        if kernel.engine == engine and fmt.name in kernel.formats:
            need = tuple(int(p) for p in kernel.min_compute_capability.split("."))
            if cc is not None and cc >= need:
                return True, f"{engine} 2:4 kernel for {fmt.name} ({kernel.source.split(':')[0]})"
            return False, f"{engine}'s 2:4 kernel for {fmt.name} needs compute capability >= " \
                          f"{kernel.min_compute_capability}; {acc.name} has {acc.compute_capability}"
    return False, f"{engine} has no 2:4 kernel for {fmt.name}"


def sparse_storage(spec: ModelSpec, fmt: WeightFormat, sparsity: SparsitySpec, *, engine: str,
                   acc=None) -> SparseStorage:
    """Dense, stored and resident weight bytes of ``spec`` in ``fmt`` with a non-structured ``sparsity``."""
    if sparsity.structured:
        raise ValueError(f"pattern {sparsity.pattern} changes the architecture: use planner.models.derive")
    data = sparsity_data()
    dense = stored = 0.0
    for group in spec.param_groups:
        item = group_storage(spec, fmt, group)
        dense += item.bytes
        stored += item.bytes
    if fmt.family == "gguf":
        return SparseStorage(sparsity.pattern, "dense (GGUF has no sparse format)", dense, dense, dense, 0.0, False,
                             None, False, "llama.cpp GGUF stores every tensor dense: sparsity saves nothing")
    saved = 0.0
    break_even = None
    for group in _targets(spec):
        item = group_storage(spec, fmt, group)
        out, inp = group.out_features or 0, group.in_features or 0
        each = item.bytes / group.count
        if sparsity.pattern in SEMI_STRUCTURED:
            if inp % data.semi_in_multiple:
                continue
            if item.quantized:
                sparse = each - linear_bytes(fmt, out, inp) + semi_structured_bytes(fmt, out, inp)
            else:  # kept in its 16-bit dtype by the format: half the values, same element size
                element = each / group.params_each
                sparse = each - out * inp * element / 2 + out * inp / 2 * data.semi_metadata_bits / 8
        else:
            if fmt.family not in data.bitmask_families or item.quantized and fmt.family != "fp8":
                continue
            value_bits = 8 * each / group.params_each if not item.quantized else fmt.bits
            weight = out * inp * value_bits / 8
            sparse = each - weight + bitmask_bytes(value_bits, out, inp, 1 - sparsity.level)
            even = bitmask_break_even(value_bits, inp)
            break_even = even if break_even is None else min(break_even, even)
        saved += max(0.0, each - sparse) * group.count
    stored = dense - saved
    if sparsity.pattern in SEMI_STRUCTURED:
        kernel, why = kernel_2_4(fmt, engine, acc)
        note = (f"2:4 compressed: {stored / dense:.0%} of dense; {why}: decode reads the compressed weights"
                if kernel else f"2:4 compressed: {stored / dense:.0%} of dense, memory only ({why})")
        return SparseStorage(sparsity.pattern, "2:4 compressed (values + 2-bit indices)", dense, stored, stored,
                             -(dense - stored) if kernel else 0.0, stored < dense, 0.5, kernel, note)
    pays = saved > 0
    resident = stored if engine in data.bitmask_resident_engines else dense
    if break_even is None:
        note = f"{fmt.name} is packed: no unstructured sparse format, stored dense"
    elif pays:
        note = (f"sparse-bitmask pays below density {break_even:.3f} (here {1 - sparsity.level:.2f}): "
                f"{stored / dense:.0%} of dense on disk; {engine} densifies at load: no GPU memory or speed gain")
    else:
        note = f"density {1 - sparsity.level:.2f} is above the sparse-bitmask break-even {break_even:.3f}: stored dense"
    return SparseStorage(sparsity.pattern, "sparse-bitmask" if pays else "dense", dense, stored, resident, 0.0,
                         pays, break_even, False, note)
