"""``fitplan compare MODEL --gpu NAME``: the seed lab's FP16 / INT8 / INT4 table on one GPU type.

Columns: memory of the model, GPUs needed, memory utilization per GPU, $/h and purchase price of those
GPUs, decode tokens/s and the predicted quality retained (80% interval). ``--json`` / ``--csv`` print
``planner.planning.compare.COMPARE_COLUMNS``.
"""

from __future__ import annotations

import argparse

from planner.render import add_format_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    from planner.planning.compare import SEED_BATCH, SEED_CONTEXT, SEED_FORMATS

    parser = subparsers.add_parser(
        "compare", help="compare weight formats of one model on one GPU type (memory, GPUs, cost, speed, quality)",
        description="The seed lab's quantization comparison: per weight format, memory, GPUs needed, "
                    "utilization, cost, speed and predicted quality on --gpu.")
    parser.add_argument("model", metavar="MODEL",
                        help="registry name or alias, a directory with config.json, or a config.json path")
    parser.add_argument("--gpu", required=True, metavar="NAME", help="GPU type (catalog name or alias)")
    parser.add_argument("--formats", default=",".join(SEED_FORMATS), metavar="LIST",
                        help=f"comma-separated weight formats (default {','.join(SEED_FORMATS)})")
    parser.add_argument("--batch", type=int, default=SEED_BATCH, metavar="N",
                        help=f"concurrent sequences (default {SEED_BATCH})")
    parser.add_argument("--context", type=int, default=SEED_CONTEXT, metavar="TOKENS",
                        help=f"tokens per sequence (default {SEED_CONTEXT})")
    parser.add_argument("--engine", default="hf", metavar="ENGINE", help="inference engine (default hf)")
    parser.add_argument("--profile", metavar="FILE", help="sensitivity profile JSON of this model")
    parser.add_argument("--calibration", metavar="DIR", help="calibration store of measured results")
    add_format_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.cli.plan import _console, load_accuracy_inputs, quality_text
    from planner.errors import InvalidRequestError
    from planner.planning.compare import compare_formats
    from planner.render import print_frame

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not formats:
        raise InvalidRequestError("--formats needs at least one format name, e.g. fp16,int8,nf4.")
    if args.batch < 1 or args.context < 1:
        raise InvalidRequestError("--batch and --context must be at least 1.")
    profile, calibration = load_accuracy_inputs(args.profile, args.calibration)
    frame = compare_formats(args.model, args.gpu, formats, batch=args.batch, context=args.context,
                            engine=args.engine, profile=profile, calibration=calibration)
    if args.output != "table":
        print_frame(frame, args.output)
        return 0
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    console.print(escape(f"{args.model} on {args.gpu}: {args.engine}, batch {args.batch} x {args.context:,} "
                         "tokens"), highlight=False)
    view = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
    for header in ("format", "GiB", "GPUs", "util", "$/h", "buy $", "tok/s", "retained % [80%]", "basis"):
        view.add_column(header, justify="left" if header in ("format", "retained % [80%]", "basis") else "right")

    def number(value, spec):
        return "-" if value is None or value != value else spec.format(value)

    for row in frame.itertuples(index=False):
        view.add_row(row.format, number(row.memory_gib, "{:.1f}"), str(row.gpus_needed) if row.gpus_needed else "-",
                     number(row.utilization_pct, "{:.0f}%"), number(row.usd_per_hour, "{:.2f}"),
                     number(row.purchase_usd, "{:,.0f}"), number(row.tokens_per_s, "{:,.0f}"),
                     quality_text(row.retained_pct, row.retained_low_pct, row.retained_high_pct), row.basis)
    console.print(view)
    for row in frame.itertuples(index=False):
        if row.note:
            console.print(escape(f"{row.format}: {row.note}"), highlight=False)
        elif not row.gpus_needed:
            console.print(escape(f"{row.format}: does not fit on 16 x {args.gpu}"), highlight=False)
    return 0
