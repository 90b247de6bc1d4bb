"""``fitplan fits --gpu NAME_OR_SIZE``: which models fit on a GPU, in which precision.

The table shows, per model that fits, the most precise format that fits (largest memory) and the
others that also fit; ``--all`` shows every (model, precision) row, including those that do not fit
or cannot run, with the reason. ``--json`` / ``--csv`` always print every row (columns:
``planner.sizing.FITS_COLUMNS``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from planner.cli._options import add_model_flags, hook_kwargs, run_hooks
from planner.render import add_format_flags, print_columns, print_frame

if TYPE_CHECKING:
    import numpy as np

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
    parser.set_defaults(func=run, quick=True)  # see planner.cli.console_main


def run(args: argparse.Namespace) -> int:
    training = hook_kwargs(args, "fits")
    if args.output == "table" and not args.all and not training:
        # The default view needs no DataFrame: skip pandas (a quarter of a second of start-up).
        from planner.sizing.fits import fit_columns

        fitted = fit_columns(args.gpu, args.model, args.precision, context=args.context, batch=args.batch,
                             engine=args.engine, kv_dtype=args.kv_dtype)
        _print_best(args, {name: fitted.column(name) for name in fitted.data})
        return 0
    from planner.sizing import what_fits

    frame = what_fits(args.gpu, args.model, args.precision, context=args.context, batch=args.batch,
                      engine=args.engine, kv_dtype=args.kv_dtype, **training)
    if args.output != "table" or args.all:
        gpu = str(frame["gpu"].iloc[0])
        usable = float(frame["usable_gib"].iloc[0])
        columns = [c for c in frame.columns if c != "gpu"] if args.output == "table" else list(frame.columns)
        print_frame(frame[columns], args.output, title=f"{gpu} ({usable:.1f} GiB usable), context {args.context:,}, "
                    f"batch {args.batch}, engine {args.engine}", formats=TABLE_FORMATS)
        return 0
    _print_best(args, {name: frame[name].to_numpy() for name in frame.columns})
    return 0


def _print_best(args: argparse.Namespace, rows: dict[str, np.ndarray]) -> None:
    """Per model that fits: its most precise fitting format, the others that fit, and how far it stretches.

    ``rows`` are the what_fits columns of one GPU (numpy arrays, text as objects), fitting rows first.
    """
    import numpy as np

    training = "train_tok_s" in rows
    speed, length = ("train_tok_s", "max_seq_len") if training else ("decode_tok_s", "max_context")
    gpu = str(rows["gpu"][0])
    usable = float(rows["usable_gib"][0])
    fitting = np.flatnonzero(rows["fits"])
    precision, safe, params = rows["precision"], rows["safe_gib"], rows["params_b"]
    if training:
        # Most bits per weight first (then the largest safe bound), then the largest models first; both
        # sorts are stable (equal keys keep the what_fits order), like pandas' sort_values(kind="stable").
        bits = {str(p): _bits(str(p)) for p in set(precision[fitting])}
        order = sorted(fitting, key=lambda i: (bits[str(precision[i])], safe[i]), reverse=True)
    else:
        # The recommended format first (planner.sizing.recommend), the others by quality then speed.
        loss = np.nan_to_num(rows["quality_loss_pct"].astype(float), nan=np.inf)
        tok_s = np.nan_to_num(rows["decode_tok_s"].astype(float), nan=-np.inf)
        order = sorted(fitting, key=lambda i: (not rows["recommended"][i], loss[i], -tok_s[i]))
    order = sorted(order, key=lambda i: params[i], reverse=True)
    by_model: dict[str, list[int]] = {}
    for i in order:
        by_model.setdefault(str(rows["model"][i]), []).append(i)
    best = np.array([indices[0] for indices in by_model.values()], dtype=np.int64)
    also = np.array([", ".join(str(precision[i]) for i in indices[1:]) for indices in by_model.values()],
                    dtype=object)
    view = {name: rows[name][best] for name in ("model", "params_b", "precision")}
    view["precision"] = np.array([str(p) for p in view["precision"]], dtype=object)
    view["also_fits"] = also
    view.update({name: rows[name][best] for name in ("safe_gib", "headroom_pct", length, "max_batch", speed, "note")})
    if training:
        rule = "precision = the fitting format with the most bits per weight"
    else:
        from planner.sizing.recommend import RULE as rule
    caption = f"{rule}; safe_gib = upper bound of the per-GPU memory; --all for every row and the reasons"
    unknown = "format support unknown on a capacity-only device"
    notes = np.array([str(note) for note in view["note"]], dtype=object)
    if (notes == unknown).any():
        notes[notes == unknown] = ""
        caption = f"{gpu} is capacity-only: format support and speed are unknown. " + caption
    view["note"] = notes
    if (notes == "").all():
        del view["note"]
    if np.isnan(view[speed].astype(float)).all():
        del view[speed]
    total = len(set(rows["model"]))
    workload = (f"{args.mode} fine-tuning, sequence {args.context:,}, micro-batch {args.batch}" if training else
                f"context {args.context:,}, batch {args.batch}, engine {args.engine}")
    print_columns(view, title=f"{len(best)} of {total} models fit on {gpu} ({usable:.1f} GiB usable) at {workload}",
                  caption=caption, formats=TABLE_FORMATS)
