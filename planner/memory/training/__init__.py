"""Fine-tuning memory, speed and cost: full, LoRA, QLoRA and freeze; recipes, optimizers, sharding.

Entry point: :func:`estimate_training_memory` (reached through ``planner.estimate_memory(...,
mode="full"|"lora"|"qlora"|"freeze")``). The pieces are small pure modules: ``lora`` (adapter counts),
``trainable`` (what a mode trains), ``optimizers``, ``activations`` / ``activation_memory`` (saved
tensors), ``logits``, ``sharding`` (DDP, ZeRO, FSDP, offload), ``throughput`` and ``terms`` (phases).
"""

from planner.memory.training.estimate import estimate_training_memory
from planner.memory.training.lora import Adapter, lora_adapters
from planner.memory.training.options import TrainingOptions, default_precision
from planner.memory.training.trainable import MODES, plan_trainable

__all__ = ["MODES", "Adapter", "TrainingOptions", "default_precision", "estimate_training_memory", "lora_adapters",
           "plan_trainable"]
