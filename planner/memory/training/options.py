"""The options of a fine-tuning estimate, checked and normalised once.

``planner.estimate_memory(..., mode="lora", **options)`` forwards the keyword arguments here; every
name is checked (a misspelled option gets a suggestion), every value validated, and the defaults are
recorded so the estimate can list them in its assumptions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from hardware_db.names import did_you_mean
from planner.errors import InvalidRequestError
from planner.memory.training.activation_memory import CHECKPOINTING
from planner.memory.training.activations import ATTENTION_IMPLS
from planner.memory.training.catalog import get_framework, get_optimizer, get_recipe
from planner.memory.training.sharding import OFFLOAD, validate
from planner.memory.training.trainable import MODES


@dataclass(frozen=True)
class TrainingOptions:
    """Everything that shapes a fine-tuning estimate besides model, format, batch and sequence."""

    mode: str = "lora"
    optimizer: str = "adamw"
    train_precision: str = "bf16-mixed"
    grad_checkpointing: str | None = None
    lora_rank: int = 8
    lora_targets: tuple[str, ...] | None = None
    lora_dropout: float = 0.05
    train_embeddings: bool = False
    trainable_layers: int = 2
    sharding: str = "none"
    offload: str = "none"
    grad_accum: int = 1
    framework: str = "hf"
    attention: str = "flash"
    activation_offload: bool = False
    optimizer_in_backward: bool = False
    packing: bool = False
    compile: bool = False
    target_len: int | None = None
    zero_bucket_elements: int | None = None
    overlap_comm: bool | None = None
    gpus_per_node: int = 8
    cuda_module_loading: str = "lazy"
    training_tokens: float | None = None
    mfu: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_NAMES = tuple(f.name for f in fields(TrainingOptions))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be a positive integer, got {value!r}.")
    return value


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRequestError(f"unknown {name} {value!r}.{did_you_mean(str(value), allowed)} "
                                  f"Use one of {', '.join(allowed)}.")
    return value


def default_precision(mode: str) -> str:
    """The load format when none is given: nf4 for QLoRA (the QLoRA paper's 4-bit NormalFloat; the HF
    BitsAndBytesConfig snippet uses bnb_4bit_quant_type="nf4"), bf16 otherwise."""
    return "nf4" if mode == "qlora" else "bf16"


def default_checkpointing(mode: str) -> str:
    """'full' for QLoRA (peft.prepare_model_for_kbit_training(use_gradient_checkpointing=True) is the
    default of the QLoRA recipes and TRL), 'none' otherwise (transformers TrainingArguments default)."""
    return "full" if mode == "qlora" else "none"


def training_options(mode: str, gpus: int, **kwargs: Any) -> TrainingOptions:
    """Validated options; ``kwargs`` are the training keyword arguments of ``estimate_memory``."""
    unknown = [k for k in kwargs if k not in _NAMES]
    if unknown:
        raise InvalidRequestError(f"unknown training option {unknown[0]!r}.{did_you_mean(unknown[0], _NAMES)} "
                                  f"Options: {', '.join(n for n in _NAMES if n != 'mode')}.")
    targets = kwargs.get("lora_targets") or ()
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    mode = _choice("fine-tuning mode", mode, MODES)
    checkpointing = kwargs.get("grad_checkpointing") or default_checkpointing(mode)
    options = TrainingOptions(mode=mode, **{**kwargs, "lora_targets": tuple(targets),
                                            "grad_checkpointing": checkpointing})
    get_optimizer(options.optimizer)
    get_recipe(options.train_precision)
    get_framework(options.framework)
    _choice("gradient checkpointing", options.grad_checkpointing, CHECKPOINTING)
    _choice("attention implementation", options.attention, ATTENTION_IMPLS)
    _choice("offload", options.offload, OFFLOAD)
    _choice("cuda_module_loading", options.cuda_module_loading, ("lazy", "eager"))
    validate(options.sharding, gpus, options.offload)
    _positive_int("grad_accum", options.grad_accum)
    _positive_int("gpus_per_node", options.gpus_per_node)
    if not 0 <= options.lora_dropout < 1:
        raise InvalidRequestError(f"lora_dropout must be in [0, 1), got {options.lora_dropout!r}.")
    if options.optimizer_in_backward and options.grad_accum > 1:
        raise InvalidRequestError("optimizer_in_backward steps each parameter as soon as its gradient exists, so "
                                  "it cannot accumulate gradients: use grad_accum=1 (torchtune raises the same).")
    if options.optimizer_in_backward and options.sharding in ("zero1", "zero2", "zero3"):
        raise InvalidRequestError("optimizer_in_backward is a plain-PyTorch feature; DeepSpeed ZeRO runs its own step.")
    if options.mfu is not None and not 0 < options.mfu <= 1:
        raise InvalidRequestError(f"mfu must be in (0, 1], got {options.mfu!r}.")
    if options.training_tokens is not None and options.training_tokens <= 0:
        raise InvalidRequestError(f"training_tokens must be positive, got {options.training_tokens!r}.")
    if options.target_len is not None:
        _positive_int("target_len", options.target_len)
    if options.zero_bucket_elements is not None:
        _positive_int("zero_bucket_elements", options.zero_bucket_elements)
    return options
