"""``fitplan estimate MODEL``: per-device memory of one run, with every term explained.

Prints the breakdown (GiB), the three totals (peak allocated, nvidia-smi, safe) and, with ``--gpu``,
whether it fits and the roofline speed. ``--explain`` adds each term's formula, inputs and source;
``--json`` prints the MemoryEstimate (params_total, peak_allocated_gib, device_total_gib, safe_gib,
breakdown_gib, terms, assumptions, warnings, extras) plus speed when a GPU is given.
"""

from __future__ import annotations

import argparse
from typing import Any

from planner.cli._options import add_engine_flags, add_model_flags, engine_kwargs, hook_kwargs, run_hooks
from planner.render import add_format_flags, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("estimate", help="memory (and speed on a GPU) of one model run",
                                   description="Per-device memory of running MODEL: every term with its "
                                               "formula and source, peak allocated / nvidia-smi / safe totals.")
    parser.add_argument("model", metavar="MODEL",
                        help="registry name or alias, a directory with config.json, or a config.json path")
    add_model_flags(parser)
    tokens = parser.add_argument_group("tokens (give --seq-len, or --prompt-len and --new-tokens)")
    tokens.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence, taken as one prompt")
    tokens.add_argument("--prompt-len", type=int, metavar="N", help="prompt tokens")
    tokens.add_argument("--new-tokens", type=int, metavar="N", help="generated tokens")
    parser.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs the model is split over")
    parser.add_argument("--gpu", metavar="NAME_OR_SIZE", help="check fit and format support on this GPU")
    parser.add_argument("--explain", action="store_true", help="print each term's formula, inputs and source")
    add_engine_flags(parser)
    run_hooks(parser, "estimate")
    add_format_flags(parser, csv=False)
    parser.set_defaults(func=run, quick=True)  # see planner.cli.console_main


def _speed(estimate, args: argparse.Namespace) -> dict[str, Any] | None:
    from planner.memory.api import prepare_inference
    from planner.memory.engines import get_engine
    from planner.speed import decode_tokens_per_s, prefill_tokens_per_s, read_bytes

    if args.gpu is None or estimate.mode != "inference":
        return None
    prepared = prepare_inference(args.model, estimate.precision, batch=args.batch, seq_len=args.seq_len,
                                 prompt_len=args.prompt_len, new_tokens=args.new_tokens, engine=args.engine,
                                 gpus=args.gpus, kv_dtype=args.kv_dtype, gpu=args.gpu, **engine_kwargs(args))
    setup, plan = prepared.setup, prepared.plan
    engine = get_engine(args.engine)
    kv = plan.kv_coeffs.at(prepared.batch, prepared.tokens.total, plan.window) * setup.pp
    decode = decode_tokens_per_s(read_bytes(setup.spec, plan.weights, setup.tp), kv, prepared.batch, prepared.gpu,
                                 setup.fmt, engine, gpus=setup.tp)
    prefill = prefill_tokens_per_s(setup.spec, prepared.tokens.prompt, prepared.batch, prepared.gpu, setup.fmt,
                                   engine, gpus=setup.tp)
    factor = setup.fmt.decode_speed[engine.name]
    return {"decode_tok_s": decode, "prefill_tok_s": prefill, "kernel_factor": factor.factor,
            "kernel_factor_measured": factor.measured, "kernel_factor_source": factor.source,
            "bandwidth_efficiency": engine.decode_bandwidth_efficiency}


def run(args: argparse.Namespace) -> int:
    from planner.memory import estimate_memory

    estimate = estimate_memory(args.model, args.precision, batch=args.batch, seq_len=args.seq_len,
                               prompt_len=args.prompt_len, new_tokens=args.new_tokens, engine=args.engine,
                               gpus=args.gpus, kv_dtype=args.kv_dtype, gpu=args.gpu,
                               **engine_kwargs(args), **hook_kwargs(args, "estimate"))
    speed = _speed(estimate, args)
    if args.output == "json":
        payload = estimate.as_json_dict()
        if speed is not None:
            payload["speed"] = speed
        print_json(payload)
        return 0
    _print_estimate(estimate, speed, explain=args.explain)
    return 0


def _print_estimate(estimate, speed: dict[str, Any] | None, *, explain: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from planner.render import console as make_console

    console = make_console()
    a = estimate.assumptions
    tokens = (f"{a.get('prompt_tokens', estimate.seq_len):,} prompt + {a.get('new_tokens', 0):,} new tokens"
              if "prompt_tokens" in a else f"{estimate.seq_len:,} tokens")
    origin = " (the checkpoint's own format)" if a.get("precision_source") else ""
    title = (f"{estimate.model}: {estimate.precision}{origin}, {estimate.mode}, engine {estimate.engine}, batch "
             f"{estimate.batch}, {tokens}, {estimate.gpus} GPU(s) (per device)")
    table = Table(title=escape(title), show_lines=explain)
    table.add_column("term")
    table.add_column("GiB", justify="right")
    if explain:
        table.add_column("formula and inputs", overflow="fold")
        table.add_column("source", overflow="fold")
    for term in estimate.terms:
        cells = [escape(f"{term.key}: {term.label}"), f"{term.gib:,.3f}"]
        if explain:
            inputs = ", ".join(f"{k}={v}" for k, v in term.inputs.items())
            cells += [escape(f"{term.formula}" + (f"\n[{inputs}]" if inputs else "")), escape(term.source)]
        table.add_row(*cells)
    console.print(table)
    extras = estimate.extras
    lines = [
        f"peak allocated (torch.cuda.max_memory_allocated): {estimate.peak_allocated_gib:,.2f} GiB "
        f"at {extras.get('peak_phase', '-')}",
        f"device total (nvidia-smi): {estimate.device_total_gib:,.2f} GiB",
        f"safe bound: {estimate.safe_gib:,.2f} GiB ({a.get('safe_rule', '')})",
    ]
    if "fits" in extras:
        verdict = "fits" if extras["fits"] else "does NOT fit"
        lines.append(f"{extras['gpu']}: {verdict}: {extras['usable_gib']:,.2f} GiB usable, headroom "
                     f"{extras['headroom_gib']:,.2f} GiB ({extras['headroom_pct']:.1f}%)")
    if "kv_cache_tokens" in extras:
        lines.append(f"vLLM KV pool: {extras['kv_pool_gib']:,.2f} GiB = {extras['kv_cache_tokens']:,} tokens, "
                     f"{extras['max_concurrent_sequences']:,} sequences of {estimate.seq_len:,} tokens")
    if speed is not None:
        def rate(value: float | None) -> str:
            return "unknown (no bandwidth/TFLOPS in the catalog)" if value is None else f"{value:,.1f} tok/s"
        measured = "measured" if speed["kernel_factor_measured"] else "not measured"
        lines.append(f"decode {rate(speed['decode_tok_s'])}, prefill {rate(speed['prefill_tok_s'])} "
                     f"(roofline; kernel factor {speed['kernel_factor']:g}, {measured})")
    if estimate.mode != "inference":
        lines += _training_lines(estimate)
    for warning in estimate.warnings:
        lines.append(f"warning: {warning}")
    if explain:
        lines.append("assumptions: " + ", ".join(f"{k}={v}" for k, v in a.items()))
    for line in lines:
        console.print(escape(line))


def _training_lines(estimate) -> list[str]:
    """Trainable parameters, host RAM, speed and cost of a fine-tuning estimate."""
    extras = estimate.extras
    lines = [f"trainable parameters: {extras['trainable_params']:,} of {estimate.params_total:,}; "
             f"phases (GiB allocated): " + ", ".join(f"{k} {v:,.2f}" for k, v in extras["phases_gib"].items())]
    if estimate.host_ram_gib:
        lines.append(f"host RAM (offload): {estimate.host_ram_gib:,.2f} GiB")
    if "tokens_per_second" in extras:
        lines.append(f"training speed: {extras['tokens_per_second']:,.0f} tokens/s at MFU {extras['mfu']:.2f} "
                     f"({extras['peak_tflops']:g} TFLOPS peak, {extras['flops_per_token']:.3g} FLOPs/token)")
    if extras.get("gpu_hours") is not None:
        cost = f", ${extras['cost_usd']:,.0f}" if extras.get("cost_usd") is not None else ", no cloud price"
        lines.append(f"{extras['training_tokens']:,.0f} tokens: {extras['training_hours']:,.1f} h, "
                     f"{extras['gpu_hours']:,.1f} GPU-hours{cost}")
    return lines
