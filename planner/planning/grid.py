"""The discrete strategy grid ``planner.plan`` enumerates, and which of it the hardware runs.

Axes (the defaults below; :class:`Grid` takes others):

- weight format: every format of the strategy vocabulary in ``DEFAULT_FORMATS`` that the engine runs
  and the GPU supports (``planner.memory.devices.format_support``); the uncompressed baseline is bf16
  (fp16 on GPUs without bf16);
- KV-cache dtype: the compute dtype and the lower-precision dtypes the engine offers on this GPU;
- sparsity: none, 2:4 and 50% unstructured (Wanda), attention heads and FFN channels (25%), whole
  layers (12.5%, 25%: the "kept layers" axis);
- distillation: depth ratio 1 / 0.75 / 0.5 and width ratio 1 / 0.75 / 0.5 of a derived student.

Structured parts need a family ``planner.models.derive`` can cut; other models get the
quantization x unstructured-sparsity x KV sub-grid.
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field

from planner.formats import get_format, get_kv_dtype
from planner.memory.devices import format_support, kv_dtype_support
from planner.models.derive import structural_refusal
from planner.models.spec import ModelSpec
from planner.planning.constraints import Constraints
from planner.strategy import (
    KV_DTYPES,
    CompressionStrategy,
    DistillationSpec,
    QuantizationSpec,
    SparsitySpec,
)

DEFAULT_FORMATS: tuple[str, ...] = ("bf16", "fp16", "fp8", "int8", "gptq-int8", "nf4", "gptq-int4", "awq-int4")
DEFAULT_KV: tuple[str, ...] = ("fp8", "int8", "int4")
# (pattern, level, method); None = dense.
DEFAULT_SPARSITY: tuple[tuple[str, float, str] | None, ...] = (
    None, ("2:4", 0.5, "wanda"), ("unstructured", 0.5, "wanda"), ("heads", 0.25, "magnitude"),
    ("ffn", 0.25, "magnitude"), ("layers", 0.125, "magnitude"), ("layers", 0.25, "magnitude"),
)
DEFAULT_DEPTHS: tuple[float, ...] = (1.0, 0.75, 0.5)
DEFAULT_WIDTHS: tuple[float, ...] = (1.0, 0.75, 0.5)


class Grid(BaseModel):
    """The axes of the grid (see the module docstring for the defaults)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    formats: tuple[str, ...] = Field(DEFAULT_FORMATS, min_length=1)
    kv_dtypes: tuple[str, ...] = DEFAULT_KV
    sparsity: tuple[tuple[str, float, str] | None, ...] = DEFAULT_SPARSITY
    depth_ratios: tuple[float, ...] = DEFAULT_DEPTHS
    width_ratios: tuple[float, ...] = DEFAULT_WIDTHS


def baseline_format(constraints: Constraints) -> str:
    """bf16 where the GPU (and engine) runs it, else fp16: the reference of ``min_speedup``. Deployment
    target ``local``: fp32, the checkpoint as the executors load it."""
    if constraints.is_local:
        return "fp32"
    acc = constraints.gpu_accelerator()
    support = format_support(get_format("bf16"), acc, constraints.memory_engine)
    return "fp16" if support.supported is False else "bf16"


def runnable_formats(formats: tuple[str, ...], constraints: Constraints) -> tuple[list[str], dict[str, str]]:
    """(formats the engine runs on the GPU, {format: why not} for the others)."""
    acc = constraints.gpu_accelerator()
    baseline = baseline_format(constraints)
    keep, dropped = [], {}
    for name in formats:
        fmt = get_format(name)
        if fmt.family == "float" and fmt.name != baseline:
            continue  # the other 16-bit dtype is not a compression
        support = format_support(fmt, acc, constraints.memory_engine)
        if support.supported is False:
            dropped[fmt.name] = support.reason
        else:
            keep.append(fmt.name)
    return keep, dropped


def runnable_kv_dtypes(kv_dtypes: tuple[str, ...], constraints: Constraints) -> list[str | None]:
    """None (the compute dtype) plus each listed KV dtype the engine offers on the GPU."""
    acc = constraints.gpu_accelerator()
    keep: list[str | None] = [None]
    for name in kv_dtypes:
        kv = get_kv_dtype(name)
        if kv.name in KV_DTYPES and kv_dtype_support(kv, acc, constraints.memory_engine).supported is not False:
            keep.append(kv.name)
    return keep


def _sparsity_options(spec: ModelSpec, grid: Grid) -> list[SparsitySpec | None]:
    options: list[SparsitySpec | None] = []
    for item in grid.sparsity:
        if item is None:
            options.append(None)
            continue
        pattern, level, method = item
        if pattern in ("layers", "ffn", "heads") and structural_refusal(spec, pattern) is not None:
            continue
        options.append(SparsitySpec(pattern=pattern, level=level, method=method))
    return options


def _distillation_options(spec: ModelSpec, grid: Grid) -> list[DistillationSpec | None]:
    options: list[DistillationSpec | None] = []
    for depth, width in itertools.product(grid.depth_ratios, grid.width_ratios):
        if depth >= 1 and width >= 1:
            options.append(None)
        elif structural_refusal(spec, "student") is None:
            options.append(DistillationSpec(depth_ratio=depth if depth < 1 else None,
                                            width_ratio=width if width < 1 else None))
    return options


def enumerate_strategies(spec: ModelSpec, constraints: Constraints, grid: Grid | None = None
                         ) -> tuple[list[CompressionStrategy], dict[str, str]]:
    """Every strategy of the grid the hardware runs (baseline first) and the formats left out, with why."""
    baseline = baseline_format(constraints)
    if constraints.is_local:
        # what the executors apply on this machine (planner.planning.local); no KV-cache dtypes (not applied)
        from planner.planning.local import compute_dtype, executable_formats, local_device

        device = local_device()
        compute = compute_dtype(device)
        formats, dropped = executable_formats(spec, device, compute=compute,
                                              candidates=grid.formats if grid is not None else None)
        formats, kvs = [baseline, *formats], [None]
        grid = grid or Grid()
    else:
        grid = grid or Grid()
        formats, dropped = runnable_formats(grid.formats, constraints)
        kvs = runnable_kv_dtypes(grid.kv_dtypes, constraints)
        compute = "fp16" if baseline == "fp16" else "bf16"
    strategies = []
    for distill, sparsity, fmt, kv in itertools.product(_distillation_options(spec, grid),
                                                        _sparsity_options(spec, grid), formats, kvs):
        quant = None if fmt == baseline and kv is None else \
            QuantizationSpec(weights=fmt, kv_cache=kv, compute_dtype=compute)
        strategies.append(CompressionStrategy(distillation=distill, sparsity=sparsity, quantization=quant))
    strategies.sort(key=lambda s: not s.is_identity)
    return strategies, dropped
