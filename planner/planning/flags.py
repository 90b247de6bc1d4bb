"""Command-line flags of a :class:`~planner.planning.Constraints` (``fitplan plan``, ``fitplan search``).

Lives outside ``planner.cli`` so the search package can reuse it (no package imports ``planner.cli``):

    from planner.planning.flags import add_constraint_flags, constraints_from_args
    add_constraint_flags(parser)            # --max-memory-gb, --gpu, ..., --deployment-target
    constraints = constraints_from_args(args)

Numbers are checked while parsing (a NaN, an infinity or a negative budget is an argparse error naming
the flag, exit code 2); combinations are checked by ``Constraints`` and reported with the flag names.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from planner.planning.names import DEPLOYMENT_TARGETS, OBJECTIVES

# Constraints field -> (flag, argparse settings). Order = order in --help.
CONSTRAINT_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "max_memory_gb": ("--max-memory-gb", {"metavar": "GIB", "help": "memory budget per GPU, GiB"}),
    "gpu": ("--gpu", {"metavar": "NAME", "help": "target GPU (catalog name or alias, e.g. 'RTX 4090')"}),
    "gpus": ("--gpus", {"metavar": "N", "help": "GPUs serving one model copy (default 1)"}),
    "max_accuracy_loss": ("--max-accuracy-loss", {"metavar": "PCT", "help": "max predicted quality loss, %% of the uncompressed model"}),
    "min_speedup": ("--min-speedup", {"metavar": "X", "help": "min speedup over the bf16/fp16 model"}),
    "speedup_metric": ("--speedup-metric", {"choices": ("decode", "prefill"),
                                            "help": "throughput --min-speedup compares (default decode)"}),
    "max_cost_per_hour": ("--max-cost-per-hour", {"metavar": "USD", "help": "max $/h of the GPUs"}),
    "max_cost_per_1m_tokens": ("--max-cost-per-1m-tokens", {"metavar": "USD",
                                                            "help": "max $ per 1M generated tokens"}),
    "min_tokens_per_s": ("--min-tokens-per-s", {"metavar": "N", "help": "min decode tokens/s of the whole batch"}),
    "context": ("--context", {"metavar": "TOKENS", "help": "tokens per sequence (default 4096 or the preset's)"}),
    "batch": ("--batch", {"metavar": "N", "help": "concurrent sequences (default 1 or the preset's)"}),
    "mode": ("--mode", {"choices": ("inference", "fine-tuning"), "help": "inference (default) or fine-tuning"}),
    "engine": ("--engine", {"metavar": "ENGINE", "help": "hf (default), vllm, llamacpp, litgpt, tensorrt-llm, ..."}),
    "deployment_target": ("--deployment-target", {"choices": DEPLOYMENT_TARGETS,
                                                  "help": "preset filling gpu, engine, batch and context "
                                                          "(default cloud_inference when no --gpu); local = "
                                                          "this machine as `fitplan run` measures it"}),
}
_FLOAT_FIELDS = ("max_memory_gb", "max_accuracy_loss", "min_speedup", "max_cost_per_hour", "max_cost_per_1m_tokens",
                 "min_tokens_per_s")
_INT_FIELDS = ("gpus", "context", "batch")


def _number(flag: str, kind: type, minimum: float, rule: str):
    """An argparse type: a finite ``kind`` (float or int) of at least ``minimum``, errors naming ``flag``."""
    noun = "a number" if kind is float else "a whole number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs {noun}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{flag} needs a finite number, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} {rule}, got {text!r}")
        return value
    return parse


def add_constraint_flags(parser: argparse.ArgumentParser, *, objective: bool = True) -> None:
    """Add the constraint flags (and ``--objective``) to ``parser``; values land on ``args.<field>``."""
    group = parser.add_argument_group("constraints")
    for field, (flag, settings) in CONSTRAINT_FLAGS.items():
        settings = dict(settings)
        if field in _FLOAT_FIELDS:
            settings["type"] = _number(flag, float, 0, "must not be negative")
        elif field in _INT_FIELDS:
            settings["type"] = _number(flag, int, 1, "must be at least 1")
        group.add_argument(flag, dest=field, default=None, **settings)
    if objective:
        group.add_argument("--objective", choices=OBJECTIVES, default="accuracy",
                           help="what the ranking optimises (default accuracy)")


def constraints_from_args(args: argparse.Namespace):
    """The :class:`Constraints` of parsed flags; a bad combination raises InvalidRequestError naming flags."""
    from pydantic import ValidationError

    from planner.errors import InvalidRequestError
    from planner.planning.constraints import Constraints

    values = {field: getattr(args, field, None) for field in CONSTRAINT_FLAGS}
    values = {field: value for field, value in values.items() if value is not None}
    try:
        return Constraints(**values)
    except ValidationError as error:
        parts = []
        for item in error.errors():
            field = str(item["loc"][0]) if item.get("loc") else ""
            flag = CONSTRAINT_FLAGS[field][0] if field in CONSTRAINT_FLAGS else ""
            message = str(item.get("msg", "")).removeprefix("Value error, ")
            for name, (other, _) in CONSTRAINT_FLAGS.items():
                if "_" in name:
                    message = re.sub(rf"\b{name}\b", other, message)
            parts.append(f"{flag}: {message}" if flag else message)
        raise InvalidRequestError("; ".join(parts)) from None
