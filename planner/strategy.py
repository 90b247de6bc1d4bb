"""CompressionStrategy: the shared, serialisable description of what is done to a model.

The planner predicts the cost and quality of a strategy, the search proposes strategies and the
executors apply them for real, all through this one vocabulary. A strategy has up to four parts,
applied in the order of the seed documents: distill -> prune -> quantize (low-rank factorisation,
when asked, runs after pruning and before quantization):

- :class:`DistillationSpec`: a smaller student (depth and/or width ratio of the teacher, or a named
  model) and its training budget;
- :class:`SparsitySpec`: a sparsity level, pattern (unstructured, N:M, attention heads, FFN channels,
  whole layers) and method (magnitude, Wanda);
- :class:`LowRankSpec`: SVD factorisation of Linear layers keeping a fraction of the rank;
- :class:`QuantizationSpec`: a weight format per module group, layers kept at higher precision and
  a KV-cache dtype.

``str(strategy)`` gives the short summary ("nf4 | 2:4 magnitude | depth 0.5"); ``to_json`` /
``from_json`` round-trip it (the payload carries ``version`` so old files keep loading).

Version 2 adds per-block overrides, the choices a profile-driven allocator makes block by block:
``QuantizationSpec.block_formats`` (a format for one block's attention or MLP) and
``SparsitySpec.block_levels`` (a sparsity level for one block's attention or MLP; 0 = dense). Version-1
files load unchanged (no overrides). The planner's accuracy model reads the overrides; the executors
and the memory model do not apply them yet.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STRATEGY_VERSION = 2

# Weight formats a strategy may name. The planner's format registry knows how to size each of them;
# executors apply those they can run on the current machine and report the rest as unsupported.
# HQQ formats: 8/4/3/2 bits at group 64 (``hqq-int4``) or the group-size variants of formats.toml
# (``hqq-int4-g32``, ``hqq-int4-g128``).
HQQ_FORMATS: tuple[str, ...] = tuple(f"hqq-int{bits}{group}" for bits in (8, 4, 3, 2) for group in ("", "-g32", "-g128"))
WEIGHT_FORMATS: tuple[str, ...] = (
    "fp32", "fp16", "bf16", "int8", "nf4", "nf4-dq", "fp4", "fp4-dq", "dynamic-int8",
    "fp8", "gptq-int4", "gptq-int8", "awq-int4", *HQQ_FORMATS,
)
KV_DTYPES: tuple[str, ...] = ("fp16", "bf16", "fp8", "int8", "int4")
SPARSITY_PATTERNS: tuple[str, ...] = ("unstructured", "2:4", "4:8", "heads", "ffn", "layers")
STRUCTURED_PATTERNS: tuple[str, ...] = ("heads", "ffn", "layers")


class _Part(BaseModel):
    # defer_build: validators are built on first use; `fitplan` imports this module for every command
    # (the run command's flags) and building them costs ~25 ms of start-up.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


def _check_choice(value: str | None, allowed: tuple[str, ...], what: str) -> str | None:
    if value is None:
        return None
    normalized = value.strip().lower()
    if normalized not in allowed:
        from hardware_db.names import did_you_mean

        raise ValueError(f"unknown {what} {value!r}.{did_you_mean(value, allowed)} Allowed: {', '.join(allowed)}.")
    return normalized


class BlockFormat(_Part):
    """Weight format of one module group of one transformer block (a per-block override)."""

    block: int = Field(ge=0, description="block (layer) index")
    group: Literal["attention", "mlp"]
    format: str

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        return _check_choice(value, WEIGHT_FORMATS, "weight format")


class BlockSparsity(_Part):
    """Sparsity level of one module group of one transformer block (a per-block override; 0 = dense)."""

    block: int = Field(ge=0, description="block (layer) index")
    group: Literal["attention", "mlp"]
    level: float = Field(ge=0, lt=1)


def _overrides_summary(items: tuple, what: str, average: str | None) -> str:
    """'+4 block formats avg 6.0b #9c1e': how many per-block overrides, their average (bits of the formats,
    or sparsity level) and the first 4 hex digits of the SHA-256 of the overrides sorted by block and group,
    so two different allocations with as many overrides never share a summary (the table's strategy
    column), while the summary stays short enough for an 80-column table."""
    import hashlib

    ordered = sorted(items, key=lambda item: (item.block, item.group))
    canonical = json.dumps([item.model_dump(mode="json") for item in ordered], sort_keys=True, separators=(",", ":"))
    tag = hashlib.sha256(canonical.encode()).hexdigest()[:4]
    return f"+{len(items)} {what}{f' avg {average}' if average else ''} #{tag}"


def _unique_blocks(items: tuple, what: str) -> None:
    seen = set()
    for item in items:
        key = (item.block, item.group)
        if key in seen:
            raise ValueError(f"{what}: block {item.block} {item.group} is given twice.")
        seen.add(key)


class QuantizationSpec(_Part):
    """Weight format per module group. ``None`` for a group means "same as ``weights``" except for
    embeddings and lm_head, which stay in the compute dtype unless set (as bitsandbytes does)."""

    weights: str = Field(description="format of the Linear layers of the transformer blocks")
    attention: str | None = Field(None, description="override for attention projections")
    mlp: str | None = Field(None, description="override for MLP / expert projections")
    embeddings: str | None = Field(None, description="format of the token embeddings (None = unquantized)")
    lm_head: str | None = Field(None, description="format of the output head (None = unquantized)")
    keep_first_layers: int = Field(0, ge=0, description="first k blocks kept at keep_format")
    keep_last_layers: int = Field(0, ge=0, description="last k blocks kept at keep_format")
    keep_format: str = Field("bf16", description="format of the kept blocks")
    compute_dtype: Literal["fp32", "bf16", "fp16"] = Field("bf16", description="dtype of the matmuls and the "
                                                           "unquantized rest")
    kv_cache: str | None = Field(None, description="KV-cache dtype (None = compute dtype)")
    block_formats: tuple[BlockFormat, ...] = Field((), description="per-block overrides (version 2): they win over "
                                                   "weights/attention/mlp and the kept layers")

    @field_validator("weights", "attention", "mlp", "embeddings", "lm_head", "keep_format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        return _check_choice(value, WEIGHT_FORMATS, "weight format")

    @field_validator("kv_cache")
    @classmethod
    def _known_kv(cls, value: str | None) -> str | None:
        return _check_choice(value, KV_DTYPES, "KV-cache dtype")

    @model_validator(mode="after")
    def _unique_overrides(self) -> "QuantizationSpec":
        _unique_blocks(self.block_formats, "block_formats")
        return self

    def block_format(self, block: int, group: str, num_blocks: int, original_block: int | None = None) -> str:
        """The format of one block's ``group`` ('attention' or 'mlp') Linears, as ``executors.steps.quantize``
        applies it: the per-block override (``block_formats``, addressed by the block's index in the original
        model: ``original_block`` after whole-layer pruning or a derived student), else ``keep_format`` for the
        first/last ``keep_*_layers`` of the ``num_blocks`` present, else the group's format. The one rule
        for it: the executors, the memory models, the accuracy model and the benchmarks all call this."""
        original = block if original_block is None else original_block
        for override in self.block_formats:
            if override.block == original and override.group == group:
                return override.format
        if block < self.keep_first_layers or block >= num_blocks - self.keep_last_layers:
            return self.keep_format
        return self.format_for(group)  # type: ignore[return-value]

    def format_for(self, group: str) -> str | None:
        """Format of a module group: 'attention', 'mlp', 'embeddings' or 'lm_head'."""
        if group == "attention":
            return self.attention or self.weights
        if group == "mlp":
            return self.mlp or self.weights
        if group == "embeddings":
            return self.embeddings
        if group == "lm_head":
            return self.lm_head
        raise ValueError(f"unknown module group {group!r}; use attention, mlp, embeddings or lm_head.")

    def summary(self) -> str:
        parts = [self.weights]
        if self.attention and self.attention != self.weights:
            parts.append(f"attn {self.attention}")
        if self.mlp and self.mlp != self.weights:
            parts.append(f"mlp {self.mlp}")
        if self.keep_first_layers or self.keep_last_layers:
            parts.append(f"keep {self.keep_first_layers}+{self.keep_last_layers} at {self.keep_format}")
        if self.kv_cache:
            parts.append(f"kv {self.kv_cache}")
        if self.block_formats:
            from planner.formats import get_format

            bits = [get_format(o.format).bits for o in self.block_formats]
            parts.append(_overrides_summary(self.block_formats, "block formats",
                                            None if None in bits else f"{sum(bits) / len(bits):.1f}b"))
        return " ".join(parts)


class SparsitySpec(_Part):
    level: float = Field(gt=0, lt=1, description="fraction removed: of weights (unstructured, N:M is fixed by the "
                         "pattern), of heads, of FFN channels or of layers")
    pattern: str = Field("unstructured")
    method: Literal["magnitude", "wanda"] = "magnitude"
    scope: Literal["global", "per-layer"] = Field("per-layer", description="rank weights over the whole model or "
                                                  "within each layer (unstructured only)")
    gradual_steps: int = Field(1, ge=1, description="raise the level in this many steps (seeds/004 scheduler)")
    max_quality_drop: float | None = Field(None, gt=0, lt=1, description="gradual schedule stops before the "
                                           "retained quality falls by more than this fraction")
    finetune_steps: int = Field(0, ge=0, description="fine-tuning steps between gradual steps")
    finetune_learning_rate: float = Field(1e-4, gt=0, description="learning rate of those fine-tuning steps")
    block_levels: tuple[BlockSparsity, ...] = Field((), description="per-block overrides of the level (version 2); "
                                                    "N:M patterns allow 0 (dense) or 0.5")

    @field_validator("pattern")
    @classmethod
    def _known_pattern(cls, value: str) -> str:
        return _check_choice(value, SPARSITY_PATTERNS, "sparsity pattern")

    @model_validator(mode="after")
    def _consistent(self) -> "SparsitySpec":
        if self.pattern in ("2:4", "4:8") and abs(self.level - 0.5) > 1e-9:
            raise ValueError(f"pattern {self.pattern} removes exactly half of the weights; set level=0.5 "
                             f"(got {self.level}).")
        if self.method == "wanda" and self.pattern in STRUCTURED_PATTERNS:
            raise ValueError("method 'wanda' scores single weights; use it with unstructured, 2:4 or 4:8 patterns.")
        if self.block_levels:
            if self.pattern in STRUCTURED_PATTERNS:
                raise ValueError("block_levels apply to unstructured, 2:4 and 4:8 sparsity only.")
            _unique_blocks(self.block_levels, "block_levels")
            if self.pattern in ("2:4", "4:8") and any(b.level not in (0.0, 0.5) for b in self.block_levels):
                raise ValueError(f"pattern {self.pattern}: a block's level is 0 (dense) or 0.5.")
            if self.scope == "global":
                raise ValueError("block_levels set each block's own level; scope 'global' ranks weights over the "
                                 "whole model at one level. Use scope='per-layer'.")
        return self

    def block_level(self, block: int, group: str) -> float:
        """Sparsity level of one block's 'attention' or 'mlp' (its override, else ``level``)."""
        for override in self.block_levels:
            if override.block == block and override.group == group:
                return override.level
        return self.level

    @property
    def structured(self) -> bool:
        return self.pattern in STRUCTURED_PATTERNS

    def summary(self) -> str:
        level = "" if self.pattern in ("2:4", "4:8") else f"{self.level:g} "
        overrides = ""
        if self.block_levels:
            mean = sum(o.level for o in self.block_levels) / len(self.block_levels)
            overrides = " " + _overrides_summary(self.block_levels, "block levels", f"{mean:.2f}")
        return f"{level}{self.pattern} {self.method}{overrides}".strip()


class DistillationSpec(_Part):
    depth_ratio: float | None = Field(None, gt=0, le=1, description="student layers / teacher layers")
    width_ratio: float | None = Field(None, gt=0, le=1, description="student MLP width / teacher MLP width")
    student: str | None = Field(None, description="a named smaller model (registry name or local path) instead "
                                "of a derived student")
    steps: int = Field(200, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft (teacher) loss")
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(128, ge=8)
    hidden_loss: Literal["cosine", "mse"] = Field("cosine", description="encoders (no logits): 1 - cosine of the "
                                                  "mean-pooled last hidden states, or MSE over every token's")

    @model_validator(mode="after")
    def _one_target(self) -> "DistillationSpec":
        derived = self.depth_ratio is not None or self.width_ratio is not None
        if derived == (self.student is not None):
            raise ValueError("a distillation target is either depth_ratio/width_ratio or a named student, "
                             "exactly one of the two.")
        return self

    def summary(self) -> str:
        if self.student:
            return f"student {self.student}"
        parts = []
        if self.depth_ratio is not None:
            parts.append(f"depth {self.depth_ratio:g}")
        if self.width_ratio is not None:
            parts.append(f"width {self.width_ratio:g}")
        return " ".join(parts)


class LowRankSpec(_Part):
    rank_ratio: float = Field(gt=0, lt=1, description="kept rank / full rank of each factorised Linear")
    targets: Literal["all-linear", "mlp", "attention"] = "all-linear"

    def summary(self) -> str:
        return f"low-rank {self.rank_ratio:g}"


class CompressionStrategy(_Part):
    version: int = Field(STRATEGY_VERSION, description="format version of the serialised strategy")
    distillation: DistillationSpec | None = None
    sparsity: SparsitySpec | None = None
    low_rank: LowRankSpec | None = None
    quantization: QuantizationSpec | None = None

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > STRATEGY_VERSION:
            raise ValueError(f"strategy version {value} is newer than this fitplan understands "
                             f"({STRATEGY_VERSION}); upgrade fitplan.")
        return value

    @property
    def is_identity(self) -> bool:
        return not any((self.distillation, self.sparsity, self.low_rank, self.quantization))

    def summary(self) -> str:
        """Short human-readable form, parts in application order reversed as people say them:
        'nf4 | 2:4 magnitude | depth 0.5'."""
        parts = [p.summary() for p in (self.quantization, self.sparsity, self.low_rank, self.distillation) if p]
        return " | ".join(parts) if parts else "baseline"

    def __str__(self) -> str:
        return self.summary()

    def to_json(self, **kwargs) -> str:
        return self.model_dump_json(exclude_none=True, **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "CompressionStrategy":
        return cls.model_validate(json.loads(text))
