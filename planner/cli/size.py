"""``fitplan size MODEL``: the fewest GPUs of each catalog type for a model, with speed and cost.

Columns: ``planner.sizing.CLUSTER_COLUMNS``; ``--gpu`` limits the table to some accelerators.
"""

from __future__ import annotations

import argparse

from planner.cli._options import add_model_flags, hook_kwargs, run_hooks
from planner.render import Layout, add_format_flags, print_frame

TABLE_FORMATS = {"usable_gib": "{:.0f}", "gpus": "{:.0f}", "tp": "{:.0f}", "pp": "{:.0f}",
                 "per_gpu_safe_gib": "{:.1f}", "memory_utilization_pct": "{:.0f}%", "decode_tok_s": "{:,.1f}",
                 "prefill_tok_s": "{:,.0f}", "usd_per_hour": "${:,.2f}", "purchase_usd": "${:,.0f}",
                 "usd_per_million_tokens": "${:,.2f}", "train_tok_s": "{:,.0f}", "hours": "{:,.1f}",
                 "usd_total": "${:,.0f}"}
LABELS = {"usable_gib": "usable", "supported": "runs", "per_gpu_safe_gib": "GiB/GPU", "memory_utilization_pct": "use",
          "decode_tok_s": "tok/s", "prefill_tok_s": "prefill", "usd_per_hour": "$/hour", "purchase_usd": "buy",
          "usd_per_million_tokens": "$/1M tok", "train_tok_s": "tok/s", "usd_total": "$ total"}
# What a narrow terminal gives up first (planner.render.Layout): gpu, gpus, tp, pp and the memory stay.
STEPS = (("drop", "purchase_usd"), ("drop", "prefill_tok_s"), ("shrink", "note"), ("drop", "usable_gib"),
         ("drop", "memory_utilization_pct"), ("drop", "hours"), ("shrink", "gpu"), ("drop", "usd_per_hour"),
         ("drop", "note"), ("drop", "supported"), ("drop", "usd_total"), ("drop", "usd_per_million_tokens"),
         ("drop", "decode_tok_s"), ("drop", "train_tok_s"))


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
    parser.add_argument("--gpus", metavar="N", help="GPUs you have of each type: types needing more are not usable")
    run_hooks(parser, "size")
    add_format_flags(parser)
    parser.set_defaults(func=run, quick=True)  # see planner.cli.console_main


def run(args: argparse.Namespace) -> int:
    from planner.cli.fits import _count
    from planner.memory.api import MAX_GPUS
    from planner.sizing import size_cluster

    max_gpus = _count(args.gpus, "--gpus", None, MAX_GPUS)
    frame = size_cluster(args.model, args.precision, batch=args.batch, seq_len=args.seq_len, engine=args.engine,
                         kv_dtype=args.kv_dtype, gpus=args.gpu, max_gpus=max_gpus, **hook_kwargs(args, "size"))
    training = "train_tok_s" in frame.columns
    workload = (f"{args.mode} fine-tuning, micro-batch {args.batch}, {args.seq_len:,} tokens, sharding "
                f"{frame['sharding'].iloc[0]}" if training else
                f"batch {args.batch}, {args.seq_len:,} tokens, engine {args.engine}")
    caption = ("memory in GiB; tok/s = training tokens/s of all GPUs at the default MFU; hours and $ with "
               "--training-tokens; runs = the chip runs this sharding; '-' = unknown; notes shortened, --json for all"
               if training else
               "memory in GiB; tp x pp = gpus; tok/s = roofline decode of the whole batch; $/1M tokens at that speed; "
               "'-' = unknown; notes shortened, --json for all")
    print_frame(frame, args.output, title=f"{args.model} in {args.precision or 'its default format'}, {workload}: "
                f"GPUs needed per type", formats=TABLE_FORMATS, caption=caption,
                layout=Layout(labels=LABELS, steps=STEPS))
    return 0
