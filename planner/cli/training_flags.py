"""Fine-tuning flags of ``fitplan estimate``, ``fits`` and ``size`` (registered as hooks of
:mod:`planner.cli._options`).

``--mode full|lora|qlora|freeze`` turns the command into a training estimate; the other flags are
the training options of ``planner.estimate_memory`` and are only passed on in a training mode (using
one with ``--mode inference`` is an error, not silently ignored).
"""

from __future__ import annotations

import argparse
from typing import Any

from planner.cli._options import FLAG_HOOKS, KWARG_HOOKS
from planner.errors import InvalidRequestError

MODES = ("inference", "full", "lora", "qlora", "freeze")

# flag -> (keyword of estimate_memory, argparse settings); defaults None = the library's documented default.
TRAINING_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--optimizer": ("optimizer", {"metavar": "NAME", "help": "adamw (default), adamw-fused, adamw-8bit, "
                                  "paged-adamw, paged-adamw-8bit, sgd, sgd-momentum, adafactor, lion"}),
    "--train-precision": ("train_precision", {"metavar": "R", "help": "mixed (= bf16-mixed, default), fp16-mixed, "
                                              "bf16 (pure, as torchtune / bf16-true), fp16, fp32"}),
    "--grad-checkpointing": ("grad_checkpointing", {"choices": ("none", "full", "selective"),
                                                    "help": "activation checkpointing (default full for qlora, "
                                                            "none otherwise)"}),
    "--lora-rank": ("lora_rank", {"type": int, "metavar": "R", "help": "LoRA rank (default 8)"}),
    "--lora-targets": ("lora_targets", {"metavar": "LIST", "help": "comma-separated module names or roles, or "
                                        "all-linear (default q_proj,v_proj)"}),
    "--lora-dropout": ("lora_dropout", {"type": float, "metavar": "P", "help": "LoRA dropout (default 0.05)"}),
    "--train-embeddings": ("train_embeddings", {"action": "store_const", "const": True,
                                                "help": "also train copies of the embeddings and lm_head "
                                                        "(peft modules_to_save)"}),
    "--trainable-layers": ("trainable_layers", {"type": int, "metavar": "N",
                                                "help": "freeze mode: train the last N layers (default 2)"}),
    "--sharding": ("sharding", {"choices": ("none", "ddp", "zero1", "zero2", "zero3", "fsdp"),
                                "help": "data-parallel layout over --gpus (default none; size: zero3)"}),
    "--offload": ("offload", {"choices": ("none", "optimizer", "params"),
                              "help": "CPU offload (DeepSpeed ZeRO-Offload / FSDP CPUOffload)"}),
    "--grad-accum": ("grad_accum", {"type": int, "metavar": "N", "help": "gradient accumulation steps (default 1)"}),
    "--framework": ("framework", {"metavar": "NAME", "help": "training stack whose implementation decides the "
                                  "saved tensors: hf (default), litgpt, torchtune, torchtune-2024, liger, qwen1, hf-2023, hf-2021"}),
    "--activation-offload": ("activation_offload", {"action": "store_const", "const": True,
                                                    "help": "offload saved activations to CPU (torchtune)"}),
    "--optimizer-in-backward": ("optimizer_in_backward", {"action": "store_const", "const": True,
                                                          "help": "step each parameter during backward"}),
    "--packing": ("packing", {"action": "store_const", "const": True, "help": "sequences are packed to --seq-len"}),
    "--compile": ("compile", {"action": "store_const", "const": True,
                              "help": "the loss is compiled (torchtune compile=True: fused chunked cross-entropy)"}),
    "--target-len": ("target_len", {"type": int, "metavar": "N",
                                    "help": "encoder-decoder: decoder (target) tokens per sequence (default --seq-len)"}),
    "--training-tokens": ("training_tokens", {"type": float, "metavar": "N",
                                              "help": "tokens to train on: GPU-hours and $ (needs --gpu)"}),
    "--mfu": ("mfu", {"type": float, "metavar": "F", "help": "model FLOPs utilisation (default 0.40)"}),
}


def add_training_flags(parser: argparse.ArgumentParser, command: str) -> None:
    group = parser.add_argument_group("fine-tuning (with --mode full|lora|qlora|freeze)")
    group.add_argument("--mode", choices=MODES, default="inference",
                       help="inference (default) or a fine-tuning mode; in fits, --context is the training "
                            "sequence length")
    for flag, (_, settings) in TRAINING_FLAGS.items():
        group.add_argument(flag, default=None, **settings)


def training_kwargs(args: argparse.Namespace, command: str) -> dict[str, Any]:
    given = {key: getattr(args, key) for key, _ in TRAINING_FLAGS.values() if getattr(args, key, None) is not None}
    mode = getattr(args, "mode", "inference")
    if mode == "inference":
        if given:
            flags = [flag for flag, (key, _) in TRAINING_FLAGS.items() if key in given]
            raise InvalidRequestError(f"{', '.join(flags)} only apply to fine-tuning: add --mode full, lora, qlora "
                                      "or freeze.")
        return {}
    for flag in ("--lora-rank", "--trainable-layers", "--grad-accum"):  # counts: the flag is named, not the field
        key = TRAINING_FLAGS[flag][0]
        if key in given and given[key] < 1:
            raise InvalidRequestError(f"{flag} must be at least 1, got {given[key]}.")
    return {"mode": mode, **given}


FLAG_HOOKS.append(add_training_flags)
KWARG_HOOKS.append(training_kwargs)
