"""``fitplan estimate MODEL``: memory, speed and cost of one model run, every term explained.

Renders ``planner.estimate`` (nothing is computed here): the memory breakdown (GiB), the three
totals (peak allocated, nvidia-smi, safe), and with ``--gpu`` the fit, the decode/prefill speed with
its step terms and the cost. ``--explain`` adds each memory term's formula, inputs and source and the
speed terms with theirs; ``--json`` prints the Estimate (memory, speed, cost).
"""

from __future__ import annotations

import argparse

from planner.cli._options import add_engine_flags, add_model_flags, engine_kwargs, hook_kwargs, run_hooks
from planner.render import add_format_flags, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    from planner.speed.engines import speed_engine_names

    parser = subparsers.add_parser("estimate", help="memory, speed and cost of one model run",
                                   description="Per-device memory of running MODEL (every term with its formula "
                                               "and source), and with --gpu its speed and cost.")
    parser.add_argument("model", metavar="MODEL",
                        help="registry name or alias, a directory with config.json, or a config.json path")
    add_model_flags(parser, engines=speed_engine_names())
    tokens = parser.add_argument_group("tokens (give --seq-len, or --prompt-len and --new-tokens)")
    tokens.add_argument("--seq-len", type=int, metavar="N", help="tokens per sequence, taken as one prompt")
    tokens.add_argument("--prompt-len", type=int, metavar="N", help="prompt tokens")
    tokens.add_argument("--new-tokens", type=int, metavar="N", help="generated tokens")
    parser.add_argument("--gpus", type=int, default=1, metavar="N", help="GPUs the model is split over")
    parser.add_argument("--gpu", metavar="NAME_OR_SIZE", help="check fit and support, predict speed and cost on this GPU")
    parser.add_argument("--ram", metavar="GB",
                        help="host RAM, e.g. 32GB: when the model does not fit on --gpu, the run modes with part of "
                             "it in RAM (llama.cpp -ngl, MoE experts on CPU, accelerate device_map, CPU only)")
    parser.add_argument("--host-bandwidth", metavar="GBPS", help="host memory bandwidth in GB/s for --ram")
    parser.add_argument("--explain", action="store_true", help="print each term's formula, inputs and source")
    add_engine_flags(parser)
    run_hooks(parser, "estimate")
    add_format_flags(parser, csv=False)
    parser.set_defaults(func=run, quick=True)  # see planner.cli.console_main


def run(args: argparse.Namespace) -> int:
    # through the package, so `planner.estimate` stays the function (importing the submodule by name would
    # rebind the package attribute to the module)
    from planner import estimate

    result = estimate(args.model, args.precision, gpu=args.gpu, gpus=args.gpus, engine=args.engine, batch=args.batch,
                      seq_len=args.seq_len, prompt_len=args.prompt_len, new_tokens=args.new_tokens, kv_dtype=args.kv_dtype,
                      **engine_kwargs(args), **hook_kwargs(args, "estimate"))
    modes = _offload(args, result)
    if args.output == "json":
        payload = result.as_json_dict()
        if modes is not None:
            payload["offload"] = [m.model_dump() for m in modes[0]]
        print_json(payload)
        return 0
    _print_estimate(result, explain=args.explain)
    if modes is not None:
        from planner.cli.fits import print_offload_modes

        print_offload_modes(*modes, f"of {result.model} (it does not fit on {result.gpu})")
    return 0


def _offload(args: argparse.Namespace, result):
    """--ram: (offload modes, host links) when the model does not fit on the GPU; None otherwise."""
    from planner.cli.fits import _number
    from planner.errors import InvalidRequestError

    if args.ram is None:
        if args.host_bandwidth is not None:
            raise InvalidRequestError("--host-bandwidth applies to offload: give --ram too.")
        return None
    if args.gpu is None:
        raise InvalidRequestError("--ram (offload) needs --gpu.")
    if result.mode != "inference":
        raise InvalidRequestError("--ram (offload) applies to inference; fine-tuning takes --offload.")
    from planner.memory.devices import resolve_gpu
    from planner.sizing.offload import host_links, offload_modes

    bandwidth = _number(args.host_bandwidth, "--host-bandwidth") if args.host_bandwidth is not None else None
    links = host_links(resolve_gpu(args.gpu), args.ram, bandwidth)
    fit = result.memory.fit
    if fit is not None and fit.fits:
        return [], links
    tokens = args.seq_len or ((args.prompt_len or 0) + (args.new_tokens or 0)) or 4096
    return offload_modes(args.gpu, args.ram, [result.model], gpus=args.gpus, context=tokens, batch=args.batch,
                         kv_dtype=args.kv_dtype, host_bandwidth_gbps=bandwidth), links


def _print_estimate(result, *, explain: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    from planner.render import console as make_console

    console = make_console()
    estimate = result.memory
    a = estimate.assumptions
    tokens = (f"{a.get('prompt_tokens', estimate.seq_len):,} prompt + {a.get('new_tokens', 0):,} new tokens"
              if "prompt_tokens" in a else f"{estimate.seq_len:,} tokens")
    engine = result.engine if result.engine == result.memory_engine else f"{result.engine} (memory as {result.memory_engine})"
    origin = " (the checkpoint's own format)" if a.get("precision_source") else ""
    title = (f"{estimate.model}: {estimate.precision}{origin}, {estimate.mode}, engine {engine}, batch "
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
    lines = [
        f"peak allocated (torch.cuda.max_memory_allocated): {estimate.peak_allocated_gib:,.2f} GiB "
        f"at {estimate.peak_phase or '-'}",
        f"device total (nvidia-smi): {estimate.device_total_gib:,.2f} GiB",
        f"safe bound: {estimate.safe_gib:,.2f} GiB ({a.get('safe_rule', '')})",
    ]
    fit = estimate.fit
    if fit is not None:
        verdict = "fits" if fit.fits else "does NOT fit"
        lines.append(f"{fit.gpu}: {verdict}: {fit.usable_gib:,.2f} GiB usable, headroom "
                     f"{fit.headroom_gib:,.2f} GiB ({fit.headroom_pct:.1f}%)")
    pool = estimate.kv_pool
    if pool is not None:
        lines.append(f"vLLM KV pool: {pool.kv_pool_gib:,.2f} GiB = {pool.kv_cache_tokens:,} tokens, "
                     f"{pool.max_concurrent_sequences:,} sequences of {estimate.seq_len:,} tokens")
    lines += speed_lines(result)
    if estimate.mode != "inference":
        lines += _training_lines(estimate)
    for warning in estimate.warnings:
        lines.append(f"warning: {warning}")
    if explain:
        lines.append("assumptions: " + ", ".join(f"{k}={v}" for k, v in a.items()))
    for line in lines:
        console.print(escape(line))
    if explain and result.speed is not None:
        console.print(_speed_table(result.speed))


def speed_lines(result) -> list[str]:
    """Speed and cost in a few lines (or why they are unknown)."""
    speed, cost = result.speed, result.cost
    lines = []
    if speed is None:
        if result.mode == "inference":
            lines.append(f"speed: {result.speed_unknown}")
    else:
        batch = (f" ({speed.decode_tokens_per_s_per_user:,.1f} per sequence, batch {speed.batch})"
                 if speed.batch > 1 else "")
        prefill = (f"prefill {speed.prefill_tokens_per_s:,.0f} tok/s, time to first token {speed.ttft_ms:,.1f} ms"
                   if speed.prefill_tokens_per_s is not None else "prefill unknown")
        lines.append(f"decode {speed.decode_tokens_per_s:,.1f} tok/s{batch}, {speed.per_token_latency_ms:,.2f} ms/token "
                     f"({speed.decode.bound}-bound); {prefill}")
        calibrated = "calibrated on published measurements" if speed.calibrated else "prior constants, not calibrated"
        lines.append(f"speed model: {speed.engine} step = max(bytes, compute) + overhead ({calibrated})")
        for note in speed.notes:
            lines.append(f"note: {note}")
    if cost is not None:
        if cost.usd_per_hour is None:
            lines.append(f"cost: no cloud price for {cost.gpu}"
                         + (f"; purchase ${cost.purchase_usd:,.0f}" if cost.purchase_usd else ""))
        else:
            out = (f"${cost.usd_per_million_output_tokens:,.3f}" if cost.usd_per_million_output_tokens is not None
                   else "unknown")
            inp = (f"${cost.usd_per_million_input_tokens:,.4f}" if cost.usd_per_million_input_tokens is not None
                   else "unknown")
            lines.append(f"cost: ${cost.usd_per_hour:,.2f}/hour for {cost.gpus} GPU(s); per 1M output tokens {out}, "
                         f"per 1M input tokens {inp}")
    return lines


def _speed_table(speed):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="speed terms (one step)", show_lines=True)
    for column, justify in (("step", "left"), ("bytes ms", "right"), ("compute ms", "right"),
                            ("overhead ms", "right"), ("total ms", "right"), ("inputs and sources", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for name, step in (("decode", speed.decode), ("prefill", speed.prefill)):
        if step is None:
            continue
        compute = "-" if step.compute_seconds is None else f"{step.compute_seconds * 1e3:,.3f}"
        inputs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in step.inputs.items() if v is not None)
        table.add_row(f"{name} ({step.bound}-bound, {step.tokens:,} tokens)", f"{step.bytes_seconds * 1e3:,.3f}", compute,
                      f"{step.overhead_seconds * 1e3:,.3f}", f"{step.seconds * 1e3:,.3f}",
                      escape(f"{step.formula}\n[{inputs}]\n" + "\n".join(step.sources)))
    return table


def _training_lines(estimate) -> list[str]:
    """Trainable parameters, host RAM, speed and cost of a fine-tuning estimate."""
    t = estimate.training
    lines = [f"trainable parameters: {t.trainable_params:,} of {estimate.params_total:,}; "
             f"phases (GiB allocated): " + ", ".join(f"{k} {v:,.2f}" for k, v in estimate.phases_gib.items())]
    if estimate.host_ram_gib:
        lines.append(f"host RAM (offload): {estimate.host_ram_gib:,.2f} GiB")
    if t.tokens_per_second is not None:
        lines.append(f"training speed: {t.tokens_per_second:,.0f} tokens/s at MFU {t.mfu:.2f} "
                     f"({t.peak_tflops:g} TFLOPS peak, {t.flops_per_token:.3g} FLOPs/token)")
    if t.gpu_hours is not None:
        cost = f", ${t.cost_usd:,.0f}" if t.cost_usd is not None else ", no cloud price"
        lines.append(f"{t.training_tokens:,.0f} tokens: {t.training_hours:,.1f} h, "
                     f"{t.gpu_hours:,.1f} GPU-hours{cost}")
    return lines
