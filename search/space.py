"""The search space: which compression strategies a search may propose, as a typed, editable object.

A :class:`SearchSpace` lists the choices of every global knob. One point of the space is one
:class:`~planner.strategy.CompressionStrategy`:

- ``weight_formats``: the format of the transformer blocks' Linear layers ("none" = keep the model's
  own dtype);
- ``kv_dtypes``: KV-cache dtype ("auto" = the compute dtype);
- ``keep_layers``: first and last k blocks kept at the compute dtype (only asked when a format other than
  the compute dtype is chosen: keeping bf16 blocks at bf16 changes nothing, and would list one strategy
  under several names);
- ``sparsity``: "none" or a pattern; a level is asked only for patterns that take one (2:4 and 4:8
  remove exactly half), from ``sparsity_levels``; unstructured and N:M use ``sparsity_method``;
- ``distill_depths`` / ``distill_widths``: student depth / MLP width ratios (1.0 = no distillation);
- ``low_rank_ratios``: kept SVD rank (1.0 = none).

Conditional parameters are only suggested when they mean something (a sparsity level only with a
pattern that takes one; ``keep_layers`` only with a weight format), so Optuna does not learn from knobs
that did nothing. :func:`default_space` derives the defaults from the model, the hardware and the engine:
only formats the target runs (``planner.memory.devices.format_support``; a capacity-only device keeps
the formats the engine runs, support unknown), structured patterns only for families the executors can
cut. The user narrows or widens it with ``space.model_copy(update=...)`` or ``SearchSpace(...)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from planner.errors import InvalidRequestError
from planner.strategy import (
    KV_DTYPES,
    SPARSITY_PATTERNS,
    CompressionStrategy,
    DistillationSpec,
    LowRankSpec,
    QuantizationSpec,
    SparsitySpec,
)

if TYPE_CHECKING:
    import optuna

    from planner.models.spec import ModelSpec

FIXED_LEVEL_PATTERNS = ("2:4", "4:8")


class SearchSpace(BaseModel):
    """Choices of every global knob (see the module docstring). Every tuple must be non-empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight_formats: tuple[str, ...] = Field(("none", "int8", "nf4"), description="'none' = unquantized")
    kv_dtypes: tuple[str, ...] = Field(("auto",), description="'auto' = the compute dtype")
    keep_layers: tuple[int, ...] = Field((0,), description="first and last k blocks kept unquantized")
    sparsity: tuple[str, ...] = Field(("none", "unstructured", "2:4"), description="'none' or a pattern")
    sparsity_levels: tuple[float, ...] = Field((0.25, 0.5), description="levels of patterns that take one")
    levels_by_pattern: dict[str, tuple[float, ...]] = Field(
        default_factory=dict, description="levels of one pattern, instead of sparsity_levels (e.g. a model with "
        "2 key/value groups can drop heads only at 0.5); left out of the study record when empty")
    sparsity_method: str = Field("wanda", description="scoring of unstructured and N:M sparsity (magnitude or "
                                 "wanda); structured patterns use magnitude")
    distill_depths: tuple[float, ...] = Field((1.0,), description="student depth ratio (1.0 = none)")
    distill_widths: tuple[float, ...] = Field((1.0,), description="student MLP width ratio (1.0 = none)")
    low_rank_ratios: tuple[float, ...] = Field((1.0,), description="kept rank ratio (1.0 = none)")
    compute_dtype: str = Field("bf16", description="dtype of the matmuls and of unquantized parts")
    bit_budgets: tuple[float, ...] = Field((), description="with a sensitivity profile: average stored bits per "
                                           "block weight; the per-block formats are then allocated exactly "
                                           "(search.allocator) instead of sampling one format")

    @field_validator("weight_formats", "kv_dtypes", "keep_layers", "sparsity", "sparsity_levels", "distill_depths",
                     "distill_widths", "low_rank_ratios")
    @classmethod
    def _non_empty_unique(cls, value: tuple) -> tuple:
        if not value:
            raise ValueError("must list at least one choice")
        return tuple(dict.fromkeys(value))

    @field_validator("weight_formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from planner.formats import get_format

        out = []
        for name in value:
            out.append("none" if name == "none" else get_format(name).name)
        return tuple(dict.fromkeys(out))

    @field_validator("kv_dtypes")
    @classmethod
    def _kv(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if v != "auto" and v not in KV_DTYPES]
        if bad:
            raise ValueError(f"unknown KV dtype(s) {', '.join(bad)}; allowed: auto, {', '.join(KV_DTYPES)}")
        return value

    @field_validator("sparsity")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if v != "none" and v not in SPARSITY_PATTERNS]
        if bad:
            raise ValueError(f"unknown sparsity pattern(s) {', '.join(bad)}; allowed: none, "
                             f"{', '.join(SPARSITY_PATTERNS)}")
        return value

    @field_validator("sparsity_levels")
    @classmethod
    def _levels(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v < 1 for v in value):
            raise ValueError("sparsity levels must be between 0 and 1 (exclusive)")
        return value

    @field_validator("levels_by_pattern")
    @classmethod
    def _pattern_levels(cls, value: dict[str, tuple[float, ...]]) -> dict[str, tuple[float, ...]]:
        for pattern, levels in value.items():
            if pattern not in SPARSITY_PATTERNS or pattern in FIXED_LEVEL_PATTERNS:
                raise ValueError(f"levels_by_pattern: {pattern!r} is not a pattern that takes a level")
            cls._levels(tuple(levels))
            if not levels:
                raise ValueError(f"levels_by_pattern[{pattern!r}] must list at least one level")
        return {pattern: tuple(dict.fromkeys(levels)) for pattern, levels in value.items()}

    def levels_for(self, pattern: str) -> tuple[float, ...]:
        """The levels a search asks for ``pattern`` (one that takes a level)."""
        return self.levels_by_pattern.get(pattern, self.sparsity_levels)

    def record(self) -> dict[str, Any]:
        """The space as JSON data for the study record (``levels_by_pattern`` only when set, so studies
        recorded before it existed resume)."""
        data = self.model_dump(mode="json")
        if not self.levels_by_pattern:
            data.pop("levels_by_pattern")
        return data

    @field_validator("distill_depths", "distill_widths")
    @classmethod
    def _ratios(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("distillation ratios must be in (0, 1]; 1.0 means no distillation")
        return value

    @field_validator("low_rank_ratios")
    @classmethod
    def _ranks(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v <= 1 for v in value):
            raise ValueError("low-rank ratios must be in (0, 1]; 1.0 means no factorisation")
        return value

    @field_validator("keep_layers")
    @classmethod
    def _keep(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 0 for v in value):
            raise ValueError("keep_layers must be >= 0")
        return value

    @model_validator(mode="after")
    def _compute(self) -> "SearchSpace":
        if self.sparsity_method not in ("magnitude", "wanda"):
            raise ValueError(f"sparsity_method must be magnitude or wanda, got {self.sparsity_method!r}")
        if self.compute_dtype not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"compute_dtype must be fp32, bf16 or fp16, got {self.compute_dtype!r}")
        return self

    # -- one point <-> one strategy ---------------------------------------------------------------

    def suggest(self, trial: "optuna.trial.BaseTrial", allocator: Any = None) -> CompressionStrategy:
        """Ask ``trial`` for one point of the space (conditional parameters only where they apply).

        With an ``allocator`` (search.allocator.BlockAllocator, from a sensitivity profile) and
        ``bit_budgets``, the trial samples a weight budget and the allocator picks every block's format.
        """
        params: dict[str, Any] = {}
        if allocator is not None and self.bit_budgets:
            bits = trial.suggest_categorical("bits", self.bit_budgets)
            allocation = allocator.allocate(allocator.bytes_for_bits(bits))
            if allocation is None:
                from planner.errors import InvalidRequestError

                raise InvalidRequestError(f"a budget of {bits:g} bits per weight is below the smallest format "
                                          "the profile measured")
            trial.set_user_attr("allocation_bits", bits)
            params["allocation"] = allocation
            params["allocator"] = allocator
        else:
            params["weights"] = trial.suggest_categorical("weights", self.weight_formats)
        if self.keeps(params.get("weights", "none")) and len(self.keep_layers) > 1 and allocator is None:
            params["keep_layers"] = trial.suggest_categorical("keep_layers", self.keep_layers)
        if len(self.kv_dtypes) > 1:
            params["kv_dtype"] = trial.suggest_categorical("kv_dtype", self.kv_dtypes)
        pattern = trial.suggest_categorical("sparsity", self.sparsity) if len(self.sparsity) > 1 else self.sparsity[0]
        params["sparsity"] = pattern
        if pattern not in ("none", *FIXED_LEVEL_PATTERNS):
            params["sparsity_level"] = trial.suggest_categorical(f"sparsity_level_{pattern}", self.levels_for(pattern))
        for name, choices in (("distill_depth", self.distill_depths), ("distill_width", self.distill_widths),
                              ("low_rank", self.low_rank_ratios)):
            if len(choices) > 1:
                params[name] = trial.suggest_categorical(name, choices)
        return self.strategy(**params)

    def keeps(self, weights: str) -> bool:
        """Whether ``keep_layers`` means something with this weight format (not 'none', not the compute dtype
        the kept blocks would be stored in anyway)."""
        return weights not in ("none", self.compute_dtype)

    def strategy(self, *, weights: str = "none", keep_layers: int | None = None, kv_dtype: str | None = None,
                 sparsity: str = "none", sparsity_level: float | None = None, distill_depth: float | None = None,
                 distill_width: float | None = None, low_rank: float | None = None, allocation: Any = None,
                 allocator: Any = None) -> CompressionStrategy:
        """The strategy of one point (missing knobs take the space's only choice, or 'off')."""
        parts: dict[str, Any] = {}
        keep = keep_layers if keep_layers is not None else self.keep_layers[0]
        kv = kv_dtype if kv_dtype is not None else self.kv_dtypes[0]
        kv = None if kv == "auto" else kv
        if allocation is not None:
            parts["quantization"] = allocator.quantization(allocation, compute_dtype=self.compute_dtype,
                                                           keep_format=self.compute_dtype, kv_cache=kv)
        elif weights != "none" or kv is not None:
            quant_format = weights if weights != "none" else self.compute_dtype
            kept = keep if self.keeps(weights) else 0
            parts["quantization"] = QuantizationSpec(weights=quant_format, compute_dtype=self.compute_dtype,
                                                     keep_first_layers=kept, keep_last_layers=kept,
                                                     keep_format=self.compute_dtype, kv_cache=kv)
        if sparsity != "none":
            level = 0.5 if sparsity in FIXED_LEVEL_PATTERNS else sparsity_level
            if level is None:
                level = self.levels_for(sparsity)[0]
            method = "magnitude" if sparsity in ("heads", "ffn", "layers") else self.sparsity_method
            parts["sparsity"] = SparsitySpec(level=level, pattern=sparsity, method=method)
        depth = distill_depth if distill_depth is not None else self.distill_depths[0]
        width = distill_width if distill_width is not None else self.distill_widths[0]
        if depth < 1 or width < 1:
            parts["distillation"] = DistillationSpec(depth_ratio=depth if depth < 1 else None,
                                                     width_ratio=width if width < 1 else None)
        rank = low_rank if low_rank is not None else self.low_rank_ratios[0]
        if rank < 1:
            parts["low_rank"] = LowRankSpec(rank_ratio=rank)
        return CompressionStrategy(**parts)

    def points(self) -> Iterator[dict[str, Any]]:
        """Every point of the space as the keyword arguments of :meth:`strategy` (conditional knobs
        expanded only where they apply)."""
        sparsity_options: list[tuple[str, float | None]] = []
        for pattern in self.sparsity:
            if pattern in ("none", *FIXED_LEVEL_PATTERNS):
                sparsity_options.append((pattern, None))
            else:
                sparsity_options.extend((pattern, level) for level in self.levels_for(pattern))
        for weights in self.weight_formats:
            keeps = self.keep_layers if self.keeps(weights) else (self.keep_layers[0],)
            for keep, kv, (pattern, level), depth, width, rank in itertools.product(
                    keeps, self.kv_dtypes, sparsity_options, self.distill_depths, self.distill_widths,
                    self.low_rank_ratios):
                yield {"weights": weights, "keep_layers": keep, "kv_dtype": kv, "sparsity": pattern,
                       "sparsity_level": level, "distill_depth": depth, "distill_width": width, "low_rank": rank}

    @property
    def size(self) -> int:
        """Number of distinct points (configurations) in the space."""
        levels = sum(1 if p in ("none", *FIXED_LEVEL_PATTERNS) else len(self.levels_for(p)) for p in self.sparsity)
        per_format = (len(self.kv_dtypes) * levels * len(self.distill_depths) * len(self.distill_widths)
                      * len(self.low_rank_ratios))
        quantized = sum(len(self.keep_layers) if self.keeps(f) else 1 for f in self.weight_formats)
        return quantized * per_format

    def canonical(self) -> str:
        """Canonical JSON of the space (what a study records to refuse a resume with another space)."""
        import json

        return json.dumps(self.record(), separators=(",", ":"))


def default_space(spec: "ModelSpec", constraints: Any, *, wide: bool = False) -> SearchSpace:
    """Defaults from the model, the hardware and the engine of ``constraints`` (planner Constraints).

    Formats and KV dtypes are the planner grid's (``planner.planning.grid``: what the engine runs on the
    GPU; the 16-bit baseline is "none"); structured patterns and students only for families the
    executors can cut, without the combinations of a pattern level and a student size that cut nothing
    (:func:`_without_refused_combinations`). ``wide=True`` adds more levels and ratios (a larger space for
    long searches).
    Raises InvalidRequestError naming the constraint when hardware gating leaves no format to search.
    Deployment target ``local``: :func:`executable_space` (what the executors run on this machine).
    """
    if constraints.is_local:
        return executable_space(spec, constraints, wide=wide)
    from planner.formats import get_kv_dtype
    from planner.memory.devices import kv_dtype_support
    from planner.models.derive import structural_refusal
    from planner.planning.grid import DEFAULT_FORMATS, DEFAULT_KV, baseline_format, runnable_formats

    formats, dropped = runnable_formats(DEFAULT_FORMATS, constraints)
    baseline = baseline_format(constraints)
    compressed = [f for f in formats if f != baseline]
    if not compressed:
        where = f"{constraints.gpu} with engine {constraints.resolved_engine}"
        reasons = "; ".join(f"{name}: {why}" for name, why in dropped.items())
        raise InvalidRequestError(f"no compressed weight format runs on {where} (set by --gpu/--engine"
                                  f"{'/--deployment-target' if constraints.deployment_target else ''}): {reasons}")
    acc = constraints.gpu_accelerator()
    kv = ["auto"] + [k for k in DEFAULT_KV
                     if kv_dtype_support(get_kv_dtype(k), acc, constraints.memory_engine).supported is not False]
    patterns = ["none", "unstructured", "2:4"]
    patterns += [kind for kind in ("ffn", "layers", "heads") if structural_refusal(spec, kind) is None]
    structured = structural_refusal(spec, "student") is None
    levels = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7) if wide else (0.125, 0.25, 0.5)
    depths = ((1.0, 0.875, 0.75, 0.625, 0.5) if wide else (1.0, 0.75, 0.5)) if structured else (1.0,)
    widths = ((1.0, 0.75, 0.5) if structured else (1.0,))
    space = SearchSpace(weight_formats=("none", *compressed), kv_dtypes=tuple(kv),
                        keep_layers=(0, 1, 2) if wide else (0, 1), sparsity=tuple(patterns), sparsity_levels=levels,
                        distill_depths=depths, distill_widths=widths,
                        low_rank_ratios=(1.0, 0.75, 0.5) if wide else (1.0,), compute_dtype=baseline)
    return _without_refused_combinations(spec, space)


def executable_space(spec: "ModelSpec", constraints: Any, device: str = "auto", *, wide: bool = False) -> SearchSpace:
    """The default space restricted to what fitplan's executors run (``planner.execution``'s lists, read
    without torch) on ``device`` ('auto': the executors' own choice, CUDA GPU 0 when present, else the
    CPU; 'cpu'; 'cuda'), so every proposed strategy can be executed and measured:

    - weight formats the executors apply there (bitsandbytes int8 / nf4 / fp4, HQQ 8/4/3/2-bit, bf16 as
      a compression of the float32 checkpoint; ``wide`` adds double-quantized and other-group-size
      variants), minus HQQ formats that cannot pack one of the model's Linear layers, minus formats
      the executors refuse with the space's compute dtype and formats the format registry cannot size
      (``dynamic-int8``: fp32 activations only, and no storage record, so its memory is not predicted);
      with a GPU deployment target, also only formats its engine runs on that GPU;
    - no KV-cache dtype (the executors never quantize the KV cache);
    - sparsity patterns and levels, student depths and widths that ``executors.preflight`` accepts for
      this model (``planner.models.derive``: the family can be cut so, and the cut removes something),
      alone and combined; low-rank only with ``wide`` (its memory is not predicted: the candidates could
      not be checked against the memory budget).

    Deployment target ``local`` (``Constraints(deployment_target='local')``) plans for the same device.
    Raises InvalidRequestError when nothing compressed is left.
    """
    from planner.formats import get_format
    from planner.memory.devices import format_support
    from planner.models.derive import structural_refusal
    from planner.planning.local import compute_dtype, executable_formats, local_device

    target = local_device(device)
    compute = compute_dtype(target)
    formats, _ = executable_formats(spec, target, compute=compute, wide=wide)
    if not constraints.is_local and constraints.gpu_accelerator() is not None:
        # A GPU target: also what its engine runs there, wherever the executors measure (a CPU measures
        # quality for a GPU deployment: a format the target cannot run would fail every trial).
        acc = constraints.gpu_accelerator()
        formats = [f for f in formats
                   if format_support(get_format(f), acc, constraints.memory_engine).supported is not False]
    if not formats:
        raise InvalidRequestError(f"no compressed weight format that fitplan's executors run on {target.name} "
                                  f"fits {spec.name}")
    levels = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7) if wide else (0.125, 0.25, 0.5)
    patterns = ["none", "unstructured", "2:4"]
    patterns += [kind for kind in ("ffn", "layers", "heads") if structural_refusal(spec, kind) is None]
    depths: tuple[float, ...] = (1.0,)
    widths: tuple[float, ...] = (1.0,)
    if structural_refusal(spec, "student") is None:
        depths = (1.0, 0.875, 0.75, 0.625, 0.5) if wide else (1.0, 0.75, 0.5)
        widths = (1.0, 0.75, 0.5)
    space = SearchSpace(weight_formats=("none", *formats), kv_dtypes=("auto",),
                        keep_layers=(0, 1, 2) if wide else (0, 1), sparsity=tuple(patterns), sparsity_levels=levels,
                        distill_depths=depths, distill_widths=widths,
                        low_rank_ratios=(1.0, 0.75, 0.5) if wide else (1.0,), compute_dtype=compute)
    return _without_refused_combinations(spec, space)


def _without_refused_combinations(spec: "ModelSpec", space: SearchSpace) -> SearchSpace:
    """Drop the structured-pattern levels and student depth/width values that the executors' preflight
    (``planner.models.derive.derive_spec``) refuses, alone or combined (e.g. 12.5% of the layers of a
    3-layer student removes none): values refused on their own first, then pattern levels before student
    sizes (a level is one option of a pattern, a student size a whole axis value), the one in most refused
    points first, until every structural point derives."""
    from planner.errors import FitplanError
    from planner.models.derive import derive_spec

    while True:
        alone: dict[tuple[str, Any], int] = {}  # refused on its own: a pattern level, or a student size
        combined: dict[tuple[str, Any], int] = {}
        structured = [(p, level) for p in space.sparsity if p in ("ffn", "layers", "heads")
                      for level in space.levels_for(p)]
        for (pattern, level), depth, width in itertools.product([("none", None), *structured], space.distill_depths,
                                                                space.distill_widths):
            strategy = space.strategy(sparsity=pattern, sparsity_level=level, distill_depth=depth, distill_width=width)
            if strategy.distillation is None and strategy.sparsity is None:
                continue
            try:
                derive_spec(spec, strategy)
            except FitplanError:
                single = strategy.distillation is None or strategy.sparsity is None
                for key in ((pattern, level), ("distill_depths", depth), ("distill_widths", width)):
                    if key[1] is not None and key[1] < 1:
                        counts = alone if single else combined
                        counts[key] = counts.get(key, 0) + 1
        refused = alone or combined
        if not refused:
            return space
        (name, value), _ = max(refused.items(), key=lambda item: (not item[0][0].startswith("distill"), item[1]))
        if name.startswith("distill"):
            space = space.model_copy(update={name: tuple(v for v in getattr(space, name) if v != value)})
            continue
        levels = tuple(v for v in space.levels_for(name) if v != value)
        by_pattern = {**space.levels_by_pattern, name: levels}
        patterns = space.sparsity
        if not levels:
            by_pattern.pop(name)
            patterns = tuple(p for p in patterns if p != name)
        space = space.model_copy(update={"levels_by_pattern": by_pattern, "sparsity": patterns})
