"""``fitplan fits --gpu NAME_OR_SIZE``: which models fit on a GPU, in which precision.

The table shows, per model that fits, the most precise format that fits (largest memory) and the
others that also fit; ``--all`` shows every (model, precision) row, including those that do not fit
or cannot run, with the reason. ``--json`` / ``--csv`` always print every row (columns:
``planner.sizing.FITS_COLUMNS``).
"""

from __future__ import annotations

import argparse

from planner.cli._options import add_model_flags, hook_kwargs, run_hooks
from planner.cli._render import add_format_flags, print_frame

TABLE_FORMATS = {"params_b": "{:.1f}", "safe_gib": "{:.1f}", "usable_gib": "{:.1f}", "headroom_gib": "{:.1f}",
                 "headroom_pct": "{:.0f}%", "peak_gib": "{:.1f}", "max_context": "{:,}", "max_batch": "{:,}",
                 "decode_tok_s": "{:,.0f}", "max_seq_len": "{:,}", "train_tok_s": "{:,.0f}"}


def _bits(precision: str) -> float:
    from planner.formats import format_catalog, get_format

    fmt = get_format(precision)
    return fmt.bits if fmt.bits else format_catalog().gguf_types[fmt.gguf_base_type].bits_per_weight


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fits", help="which models fit on a GPU",
                                   description="Every registry model x common precisions on one GPU (or a "
                                               "capacity such as 16GB): fits, headroom, longest context, "
                                               "largest batch, decode speed.")
    parser.add_argument("--gpu", required=True, metavar="NAME_OR_SIZE", help="catalog name or capacity, e.g. 16GB")
    parser.add_argument("--model", action="append", metavar="M", help="only these registry models (repeatable)")
    add_model_flags(parser, many=True)
    parser.add_argument("--context", type=int, default=4096, metavar="N",
                        help="tokens per sequence, prompt included (default 4096)")
    parser.add_argument("--all", action="store_true", help="print every (model, precision) row")
    run_hooks(parser, "fits")
    add_format_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.sizing import what_fits

    frame = what_fits(args.gpu, args.model, args.precision, context=args.context, batch=args.batch,
                      engine=args.engine, kv_dtype=args.kv_dtype, **hook_kwargs(args, "fits"))
    gpu = str(frame["gpu"].iloc[0])
    usable = float(frame["usable_gib"].iloc[0])
    if args.output != "table" or args.all:
        columns = [c for c in frame.columns if c != "gpu"] if args.output == "table" else list(frame.columns)
        print_frame(frame[columns], args.output, title=f"{gpu} ({usable:.1f} GiB usable), context {args.context:,}, "
                    f"batch {args.batch}, engine {args.engine}", formats=TABLE_FORMATS)
        return 0
    fitting = frame[frame["fits"]].copy()
    fitting["_bits"] = [_bits(str(p)) for p in fitting["precision"]]
    fitting = fitting.sort_values(["_bits", "safe_gib"], ascending=False, kind="stable")
    fitting = fitting.sort_values("params_b", ascending=False, kind="stable")
    best = fitting.groupby("model", sort=False, observed=True).head(1)
    others = fitting.groupby("model", sort=False, observed=True)["precision"].apply(
        lambda s: ", ".join(str(p) for p in s.iloc[1:]))
    training = "train_tok_s" in frame.columns
    speed, length = ("train_tok_s", "max_seq_len") if training else ("decode_tok_s", "max_context")
    view = best[["model", "params_b", "precision", "safe_gib", "headroom_pct", length, "max_batch", speed,
                 "note"]].copy()
    view.insert(3, "also_fits", view["model"].map(others).fillna(""))
    caption = ("precision = the fitting format with the most bits per weight; safe_gib = upper bound of the "
               "per-GPU memory; "
               "--all for every row and the reasons")
    unknown = "format support unknown on a capacity-only device"
    if (view["note"].astype(str) == unknown).any():
        view["note"] = view["note"].astype(str).replace(unknown, "")
        caption = f"{gpu} is capacity-only: format support and speed are unknown. " + caption
    if (view["note"].astype(str) == "").all():
        view = view.drop(columns="note")
    if view[speed].isna().all():
        view = view.drop(columns=speed)
    total = frame["model"].nunique()
    workload = (f"{args.mode} fine-tuning, sequence {args.context:,}, micro-batch {args.batch}" if training else
                f"context {args.context:,}, batch {args.batch}, engine {args.engine}")
    print_frame(view.reset_index(drop=True), "table",
                title=f"{len(view)} of {total} models fit on {gpu} ({usable:.1f} GiB usable) at {workload}",
                caption=caption, formats=TABLE_FORMATS)
    return 0
