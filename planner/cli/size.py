"""``fitplan size MODEL``: the fewest GPUs of each catalog type for a model, with speed and cost.

Columns: ``planner.sizing.CLUSTER_COLUMNS``; ``--gpu`` limits the table to some accelerators.
"""

from __future__ import annotations

import argparse

from planner.cli._options import add_model_flags, hook_kwargs, run_hooks
from planner.render import add_format_flags, print_frame

TABLE_FORMATS = {"usable_gib": "{:.0f}", "gpus": "{:.0f}", "tp": "{:.0f}", "pp": "{:.0f}",
                 "per_gpu_safe_gib": "{:.1f}", "memory_utilization_pct": "{:.0f}%", "decode_tok_s": "{:,.1f}",
                 "prefill_tok_s": "{:,.0f}", "usd_per_hour": "${:,.2f}", "purchase_usd": "${:,.0f}",
                 "usd_per_million_tokens": "${:,.2f}", "train_tok_s": "{:,.0f}", "hours": "{:,.1f}",
                 "usd_total": "${:,.0f}"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("size", help="how many GPUs of each type a model needs, and the cost",
                                   description="For every catalog GPU: the fewest GPUs (tensor parallel within "
                                               "a node, then pipeline stages), memory use, roofline speed, $/hour, "
                                               "purchase cost and $ per 1M generated tokens.")
    parser.add_argument("model", metavar="MODEL",
                        help="registry name or alias, a directory with config.json, or a config.json path")
    add_model_flags(parser)
    parser.add_argument("--seq-len", type=int, default=4096, metavar="N", help="tokens per sequence (default 4096)")
    parser.add_argument("--gpu", action="append", metavar="NAME", help="only these accelerators (repeatable)")
    run_hooks(parser, "size")
    add_format_flags(parser)
    parser.set_defaults(func=run, quick=True)  # see planner.cli.console_main


def run(args: argparse.Namespace) -> int:
    from planner.sizing import size_cluster

    frame = size_cluster(args.model, args.precision, batch=args.batch, seq_len=args.seq_len, engine=args.engine,
                         kv_dtype=args.kv_dtype, gpus=args.gpu, **hook_kwargs(args, "size"))
    training = "train_tok_s" in frame.columns
    workload = (f"{args.mode} fine-tuning, micro-batch {args.batch}, {args.seq_len:,} tokens, sharding "
                f"{frame['sharding'].iloc[0]}" if training else
                f"batch {args.batch}, {args.seq_len:,} tokens, engine {args.engine}")
    caption = ("speed = training tokens/s of all GPUs at the default MFU; hours and $ with --training-tokens; "
               "'-' = unknown" if training else
               "speed = roofline decode of the whole batch; $/1M tokens at that speed; '-' = unknown")
    print_frame(frame, args.output, title=f"{args.model} in {args.precision or 'its default format'}, {workload}: "
                f"GPUs needed per type", formats=TABLE_FORMATS, caption=caption)
    return 0
