"""The facts behind fine-tuning estimates, loaded from ``planner/data/training.toml``.

Precision recipes, optimizers, framework behaviours and the DeepSpeed / throughput constants are data
with a named source each; this module validates them (pydantic) and looks them up by name or alias,
suggesting close spellings for unknown names.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hardware_db.names import did_you_mean, normalize_name
from planner._data import read_data_toml
from planner.errors import InvalidRequestError

SCHEMA_VERSION = 1


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = ""
    description: str
    aliases: tuple[str, ...] = ()
    source: str


class Recipe(_Entry):
    """How a precision recipe stores trainable weights, gradients, states and activations (bytes)."""

    compute_dtype: Literal["fp32", "bf16", "fp16"]
    autocast: bool = Field(description="torch.autocast: matmuls in compute_dtype, norms/softmax/loss in fp32")
    trainable_weight_bytes: int = Field(ge=1, description="storage of trainable weights in full fine-tuning")
    gradient_bytes: int = Field(ge=1)

    @property
    def compute_bytes(self) -> int:
        return 4 if self.compute_dtype == "fp32" else 2


class Optimizer(_Entry):
    """Per-parameter optimizer state layout."""

    state_tensors: int = Field(ge=0, description="state tensors per parameter (AdamW: exp_avg, exp_avg_sq)")
    state_bytes: int = Field(ge=0, description="bytes per state element; 0 = the parameter's dtype")
    block_size: int = Field(0, ge=0, description="quantization block of 8-bit states (one scale per block)")
    block_scale_bytes: int = Field(0, ge=0)
    min_8bit_size: int = Field(0, ge=0, description="smaller parameters keep 32-bit states (bitsandbytes)")
    factored: bool = Field(False, description="Adafactor: row + column second moments for >=2-D parameters")
    paged: bool = Field(False, description="states live in CUDA unified memory and page out to host RAM")
    step_temporaries: int = Field(ge=0, description="parameter-sized temporaries while step() runs")
    step_temporaries_scope: Literal["all", "largest", "none"]


class Framework(_Entry):
    """Implementation facts of a training stack that change the tensors kept for backward."""

    loss: Literal["full", "chunked-128", "chunked-8", "fused"]
    loss_upcast: bool
    adapter_dtype: Literal["fp32", "base"]
    norm_fp32_input: bool
    lora_dropout_per_module: bool
    quantized_base_saves_input: bool
    kbit_upcasts_unquantized: bool
    quantizes_lm_head: bool
    fused_qkv: bool
    fused_gelu: bool
    softmax_saves_input: bool
    dequantized_weight_saved: bool
    fsdp_shards_quant_state: bool = False
    zero_grad_set_to_none: bool = True
    init_quantize_workspace: float = 0.0


class DeepSpeedConstants(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    additional_buffer_factor: float = Field(gt=0)
    reduce_bucket_size: int = Field(gt=0)
    overlap_comm_stage12: bool
    stage3_max_live_parameters: int = Field(gt=0)
    stage3_max_reuse_distance: int = Field(gt=0)
    source: str


class AllocatorConstants(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unsplit_remainder_mib: float = Field(ge=0)
    source: str


class ThroughputDefaults(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mfu: float = Field(gt=0, le=1)
    source: str


class DropoutDefaults(BaseModel):
    """(attention, hidden) dropout per model_type when config.json omits the keys."""

    model_config = ConfigDict(frozen=True, extra="allow")

    source: str

    def for_model_type(self, model_type: str) -> tuple[float, float]:
        attention, hidden = (self.model_extra or {}).get(model_type, (0.0, 0.0))
        return float(attention), float(hidden)


class TrainingCatalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int
    recipes: dict[str, Recipe]
    optimizers: dict[str, Optimizer]
    frameworks: dict[str, Framework]
    deepspeed: DeepSpeedConstants
    throughput: ThroughputDefaults
    allocator: AllocatorConstants
    dropout_defaults: DropoutDefaults


@cache
def load_catalog() -> TrainingCatalog:
    """The validated contents of ``planner/data/training.toml`` (read once)."""
    raw = read_data_toml("training.toml", SCHEMA_VERSION)
    for table in ("recipes", "optimizers", "frameworks"):
        for name, entry in raw.get(table, {}).items():
            entry["name"] = name
    return TrainingCatalog.model_validate(raw)


def _lookup(kind: str, name: str, table: dict[str, _Entry]) -> _Entry:
    wanted = normalize_name(name)
    for entry in table.values():
        if wanted in {normalize_name(label) for label in (entry.name, *entry.aliases)}:
            return entry
    labels = [label for entry in table.values() for label in (entry.name, *entry.aliases)]
    raise InvalidRequestError(
        f"unknown {kind} {name!r}.{did_you_mean(name, labels)} Known: {', '.join(sorted(table))}.")


def get_recipe(name: str) -> Recipe:
    """A precision recipe by name or alias ('mixed' -> bf16-mixed, 'bf16-true' -> bf16, ...)."""
    return _lookup("training precision", name, load_catalog().recipes)  # type: ignore[return-value]


def get_optimizer(name: str) -> Optimizer:
    """An optimizer by name or alias ('adamw_bnb_8bit' -> adamw-8bit, ...)."""
    return _lookup("optimizer", name, load_catalog().optimizers)  # type: ignore[return-value]


def get_framework(name: str) -> Framework:
    """A training-stack profile by name ('hf', 'litgpt', 'torchtune', 'liger')."""
    return _lookup("framework", name, load_catalog().frameworks)  # type: ignore[return-value]
