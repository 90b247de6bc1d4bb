"""Workload flags shared by ``estimate``, ``fits`` and ``size``, and the hooks that extend them.

A module that adds flags (e.g. training options) appends a function to ``FLAG_HOOKS`` that adds
arguments to a parser for a command name, and one to ``KWARG_HOOKS`` that turns the parsed values
into keyword arguments of the library call. Hooks must be registered before ``build_parser`` runs
(import the module from ``planner/cli/__init__.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

FLAG_HOOKS: list[Callable[[argparse.ArgumentParser, str], None]] = []
KWARG_HOOKS: list[Callable[[argparse.Namespace, str], dict[str, Any]]] = []


# Inference engine options: flag -> (keyword of estimate_memory, argparse settings).
ENGINE_OPTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "--hf-logits": ("hf_logits", {"choices": ("last", "full"),
                                  "help": "transformers logits: 'last' (>= 4.45) or 'full' (<= 4.44, whole prompt in fp32)"}),
    "--hf-cache": ("hf_cache", {"choices": ("dynamic", "legacy", "static"),
                                "help": "transformers DynamicCache (>= 4.36), legacy tuple caches, or a static "
                                        "cache allocated up front (StaticCache, AutoAWQ fused)"}),
    "--cache-len": ("cache_len", {"type": int, "metavar": "N",
                                  "help": "tokens per sequence of a static cache (AutoAWQ fused: max_seq_len, 2048)"}),
    "--transformers-version": ("transformers_version", {"metavar": "X.Y",
                                                        "help": "transformers release of generate(), e.g. 4.38 "
                                                                "(older releases keep more memory)"}),
    "--attention": ("attention", {"choices": ("flash", "sdpa", "eager"), "help": "attention kernel (default sdpa)"}),
    "--parallel": ("parallel", {"choices": ("tensor", "pipeline"), "help": "how --gpus split the model"}),
    "--cuda-module-loading": ("cuda_module_loading", {"choices": ("lazy", "eager"),
                                                      "help": "CUDA_MODULE_LOADING (context size)"}),
    "--prefill-chunk-size": ("prefill_chunk_size", {"type": int, "help": "transformers prefill_chunk_size"}),
    "--gpu-memory-utilization": ("gpu_memory_utilization", {"type": float, "help": "vLLM (default 0.9)"}),
    "--max-num-batched-tokens": ("max_num_batched_tokens", {"type": int, "help": "vLLM profile run size"}),
    "--max-num-seqs": ("max_num_seqs", {"type": int, "help": "vLLM"}),
    "--n-ubatch": ("n_ubatch", {"type": int, "help": "llama.cpp physical batch (default 512)"}),
}


def add_model_flags(parser: argparse.ArgumentParser, *, many: bool = False, engines: list[str] | None = None) -> None:
    """``--precision`` (one, or several with ``many``), ``--engine``, ``--kv-dtype``, ``--batch``.

    ``engines`` given: the engine is checked by the library (one-line error with a close match), the
    names are listed in the help; otherwise argparse checks it against the memory engines."""
    if many:
        parser.add_argument("--precision", action="append", metavar="P",
                            help="weight format (repeatable; default: eight common formats of the engine)")
    else:
        parser.add_argument("--precision", default=None, metavar="P",
                            help="weight format, e.g. bf16, fp8, nf4, awq-int4, q4_k_m (default bf16; nf4 for "
                                 "--mode qlora)")
    from planner.memory.engines import engine_names

    if engines:
        parser.add_argument("--engine", default="hf", metavar="NAME",
                            help=f"inference engine: {', '.join(engines)} (default hf)")
    else:
        parser.add_argument("--engine", default="hf", choices=engine_names(), help="inference engine (default hf)")
    parser.add_argument("--kv-dtype", metavar="D", help="KV-cache dtype: fp16, bf16, fp8, int8, int4")
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="sequences at once (default 1)")


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine options")
    for flag, (_, settings) in ENGINE_OPTIONS.items():
        group.add_argument(flag, **settings)
    group.add_argument("--no-flash-attn", dest="flash_attn", action="store_false", default=None,
                       help="llama.cpp without -fa (materialises KQ scores)")


def run_hooks(parser: argparse.ArgumentParser, command: str) -> None:
    for hook in FLAG_HOOKS:
        hook(parser, command)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    options = {key: getattr(args, key, None) for key, _ in ENGINE_OPTIONS.values()}
    if getattr(args, "flash_attn", None) is not None:
        options["flash_attn"] = args.flash_attn
    return {key: value for key, value in options.items() if value is not None}


def hook_kwargs(args: argparse.Namespace, command: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for hook in KWARG_HOOKS:
        kwargs.update(hook(args, command))
    return kwargs
