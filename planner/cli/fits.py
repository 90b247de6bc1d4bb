"""``fitplan fits --gpu NAME_OR_SIZE``: which models fit on a GPU, in which precision.

The table shows, per model that fits, the recommended format and the others that also fit, then one
line on what did not fit and why; ``--all`` shows every (model, precision) row, including those that
do not fit or cannot run, with the reason. ``--json`` / ``--csv`` always print every row (columns:
``planner.sizing.FITS_COLUMNS``). ``--gpus N`` splits each model over N GPUs; ``--ram GB`` adds the
run modes with part of the model in RAM (``planner.sizing.offload``) for the models that do not fit;
``--users U`` sizes U concurrent sessions of ``--context`` tokens. Tables fit the terminal
(``planner.render.Layout``): low-value columns go first, the model and its format never.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import math
import re

from planner.cli._options import add_model_flags, hook_kwargs, run_hooks
from planner.errors import InvalidRequestError
from planner.render import Layout, add_format_flags, print_columns, print_frame, print_json

if TYPE_CHECKING:
    import numpy as np

TABLE_FORMATS = {"params_b": "{:.1f}", "safe_gib": "{:.1f}", "usable_gib": "{:.1f}", "headroom_gib": "{:.1f}",
                 "headroom_pct": "{:.0f}%", "peak_gib": "{:.1f}", "max_context": "{:,}", "max_batch": "{:,}",
                 "decode_tok_s": "{:,.0f}", "max_seq_len": "{:,}", "train_tok_s": "{:,.0f}",
                 "gpu_gib": "{:.1f}", "host_gib": "{:.1f}"}
LABELS = {"params_b": "params", "also_fits": "also fits", "safe_gib": "GiB", "headroom_pct": "free",
          "max_context": "max ctx", "max_batch": "sessions", "decode_tok_s": "tok/s", "max_seq_len": "max seq",
          "train_tok_s": "tok/s", "gpu_gib": "GPU GiB", "host_gib": "RAM GiB", "how": "setting"}
# What a narrow terminal gives up first (planner.render.Layout); model and precision are the answer.
STEPS = (("drop", "headroom_pct"), ("shrink", "also_fits"), ("shrink", "note"), ("drop", "also_fits"),
         ("drop", "note"), ("drop", "params_b"), ("drop", "max_batch"), ("shrink", "model"),
         ("drop", "max_context"), ("drop", "max_seq_len"), ("drop", "decode_tok_s"), ("drop", "train_tok_s"))
# --sort keys: column (per view) and whether larger comes first.
SORT_KEYS = {"params": ("params_b", True), "name": ("model", False), "gib": ("safe_gib", True),
             "free": ("headroom_pct", True), "context": ("max_context", True), "sessions": ("max_batch", True),
             "speed": ("decode_tok_s", True), "quality": ("quality_loss_pct", False)}
# The --all view: every what_fits column, the least useful given up first.
ALL_LABELS = {**LABELS, "supported": "runs", "peak_gib": "peak", "usable_gib": "usable", "headroom_gib": "free GiB",
              "quality_loss_pct": "loss %", "recommended": "rec"}
ALL_STEPS = (("drop", "peak_gib"), ("drop", "usable_gib"), ("drop", "headroom_gib"), ("drop", "mode"),
             ("drop", "quality_loss_pct"), ("drop", "recommended"), ("shrink", "note"), ("drop", "params_b"),
             ("drop", "headroom_pct"), ("shrink", "model"), ("drop", "max_batch"), ("drop", "max_context"),
             ("drop", "max_seq_len"), ("drop", "decode_tok_s"), ("drop", "train_tok_s"))
_FILTER = re.compile(r"^\s*([a-z_/]+)\s*(<=|>=|==|!=|<|>|=)\s*([-+]?[0-9.]+(?:e[-+]?\d+)?)\s*$", re.IGNORECASE)


def _bits(precision: str) -> float:
    from planner.formats import format_catalog, get_format

    fmt = get_format(precision)
    return fmt.bits if fmt.bits else format_catalog().gguf_types[fmt.gguf_base_type].bits_per_weight


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("fits", help="which models fit on a GPU",
                                   description="Every registry model x common precisions on one GPU (or a "
                                               "capacity such as 16GB, or --gpus N of them): fits, headroom, "
                                               "longest context, concurrent sessions, decode speed; with --ram, "
                                               "the offloaded run modes of the models that do not fit.")
    parser.add_argument("--gpu", required=True, metavar="NAME_OR_SIZE", help="catalog name or capacity, e.g. 16GB")
    parser.add_argument("--gpus", default="1", metavar="N",
                        help="GPUs of that type on one node; each model is split the engine's way (default 1)")
    parser.add_argument("--model", action="append", metavar="M", help="only these registry models (repeatable)")
    add_model_flags(parser, many=True)
    parser.add_argument("--context", type=int, default=4096, metavar="N",
                        help="tokens per sequence, prompt included (default 4096)")
    parser.add_argument("--users", metavar="U",
                        help="concurrent sessions of --context tokens to serve (sizes the batch; the 'sessions' "
                             "column says how many fit)")
    parser.add_argument("--ram", metavar="GB",
                        help="host RAM, e.g. 32GB: add run modes with part of the model in RAM (llama.cpp -ngl, "
                             "MoE experts on CPU, accelerate device_map, CPU only)")
    parser.add_argument("--host-bandwidth", metavar="GBPS",
                        help="host memory bandwidth in GB/s for --ram (default: dual-channel DDR5-5600, 89.6)")
    view = parser.add_argument_group("table view")
    view.add_argument("--sort", metavar="KEY", help=f"sort by {', '.join(SORT_KEYS)} (default params)")
    view.add_argument("--top", metavar="N", help="print only the first N models")
    view.add_argument("--filter", action="append", metavar="EXPR",
                      help="keep models whose name contains EXPR, or rows where KEY OP NUMBER holds (KEY: "
                           "params, gib, free, context, sessions, speed, quality; OP: < <= > >= = !=); repeatable")
    view.add_argument("--explain", action="store_true", help="print notes whole (they are shortened to fit)")
    parser.add_argument("--all", action="store_true", help="print every (model, precision) row")
    run_hooks(parser, "fits")
    add_format_flags(parser)
    parser.set_defaults(func=run, quick=True)  # see planner.cli.console_main


def _count(value: str | None, flag: str, default: int | None, maximum: int) -> int | None:
    """A positive whole number given as text (one-line error naming the flag otherwise)."""
    if value is None:
        return default
    text = str(value).strip()
    if not re.fullmatch(r"\+?\d+", text) or not 1 <= int(text) <= maximum:
        raise InvalidRequestError(f"{flag} must be a whole number from 1 to {maximum:,}; got {value!r}.")
    return int(text)


def _number(value: str, flag: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise InvalidRequestError(f"{flag} must be a finite number; got {value!r}.")
    return number


def _close(word: str, choices) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _view_options(args: argparse.Namespace) -> tuple[str, int | None, list]:
    """Check --sort, --top and --filter (one-line errors naming the flag); filters as (key, op, number) or text."""
    sort = (args.sort or "params").strip().lower()
    if sort not in SORT_KEYS:
        raise InvalidRequestError(f"--sort {args.sort!r} is not a sort key; keys: {', '.join(SORT_KEYS)}"
                                  f"{_close(sort, SORT_KEYS)}.")
    top = _count(args.top, "--top", None, 1_000_000)
    filters: list = []
    for expr in args.filter or []:
        if not str(expr).strip() or len(str(expr)) > 200:
            raise InvalidRequestError(f"--filter must be a name fragment or KEY OP NUMBER (e.g. 'params>=7'); "
                                      f"got {expr!r}.")
        match = _FILTER.match(expr)
        if match:
            key, op, number = match.group(1).lower(), match.group(2), match.group(3)
            if key not in SORT_KEYS or key == "name":
                keys = [k for k in SORT_KEYS if k != "name"]
                raise InvalidRequestError(f"--filter {expr!r}: unknown key {key!r}; keys: {', '.join(keys)}"
                                          f"{_close(key, keys)}.")
            filters.append((key, "==" if op == "=" else op, _number(number, "--filter")))
        elif re.search(r"[<>=!]", expr):
            raise InvalidRequestError(f"--filter {expr!r} is not KEY OP NUMBER (e.g. 'params>=7', 'speed>20').")
        else:
            filters.append(expr.strip().lower())
    return sort, top, filters


def run(args: argparse.Namespace) -> int:
    from planner.memory.api import MAX_BATCH, MAX_GPUS

    training = hook_kwargs(args, "fits")
    gpus = _count(args.gpus, "--gpus", 1, MAX_GPUS)
    users = _count(args.users, "--users", None, MAX_BATCH)
    if users is not None:
        if args.batch != 1 and args.batch != users:
            raise InvalidRequestError(f"--users {users} and --batch {args.batch} disagree; give one of them.")
        if training:
            raise InvalidRequestError("--users sizes serving; fine-tuning takes --batch (the micro-batch).")
        args.batch = users
    view = _view_options(args)
    if args.host_bandwidth is not None and args.ram is None:
        raise InvalidRequestError("--host-bandwidth applies to offload: give --ram too.")
    if args.ram is not None and args.output == "csv":
        raise InvalidRequestError("--ram adds a second table: use --json (both tables) or the default view, not --csv.")
    if args.ram is not None and training:
        raise InvalidRequestError("--ram (offload) applies to inference; fine-tuning takes --offload.")
    host_bandwidth = _number(args.host_bandwidth, "--host-bandwidth") if args.host_bandwidth is not None else None
    if args.ram is not None:
        from planner.sizing.offload import host_links
        from planner.memory.devices import resolve_gpu

        host_links(resolve_gpu(args.gpu), args.ram, host_bandwidth)  # bad --ram: one line before any work
    if args.output == "table" and not args.all and not training:
        # The default view needs no DataFrame: skip pandas (a quarter of a second of start-up).
        from planner.sizing.fits import fit_columns

        fitted = fit_columns(args.gpu, args.model, args.precision, context=args.context, batch=args.batch,
                             engine=args.engine, kv_dtype=args.kv_dtype, gpus=gpus)
        rows = {name: fitted.column(name) for name in fitted.data}
        _print_best(args, rows, view, gpus)
        _print_offload(args, rows, gpus, host_bandwidth)
        return 0
    from planner.sizing import what_fits

    frame = what_fits(args.gpu, args.model, args.precision, context=args.context, batch=args.batch,
                      engine=args.engine, kv_dtype=args.kv_dtype, gpus=gpus, **training)
    if args.output != "table" or args.all:
        gpu = str(frame["gpu"].iloc[0])
        usable = float(frame["usable_gib"].iloc[0])
        if args.output == "json" and args.ram is not None:
            offload = _offload(args, {name: frame[name].to_numpy() for name in frame.columns}, gpus, host_bandwidth)
            print_json({"fits": frame.to_dict(orient="records"), "offload": [o.model_dump() for o in offload]})
            return 0
        columns = [c for c in frame.columns if c != "gpu"] if args.output == "table" else list(frame.columns)
        if args.output == "table":
            frame = _view_frame(frame, view)
        print_frame(frame[columns], args.output, title=f"{_gpus_label(gpus, gpu)} ({usable:.1f} GiB usable each), "
                    f"context {args.context:,}, batch {args.batch}, engine {args.engine}; memory in GiB",
                    formats={**TABLE_FORMATS, "quality_loss_pct": "{:.1f}"},
                    caption="notes shortened to fit: --json or --csv for the full text",
                    layout=Layout(labels=ALL_LABELS, steps=ALL_STEPS))
        if args.output == "table":
            _print_offload(args, {name: frame[name].to_numpy() for name in frame.columns}, gpus, host_bandwidth)
        return 0
    _print_best(args, {name: frame[name].to_numpy() for name in frame.columns}, view, gpus)
    return 0


def _view_frame(frame, view: tuple[str, int | None, list]):
    """The --all table with --filter, --sort and --top applied (rows, not models) and short model names
    in a narrow terminal."""
    from planner.render import console

    sort, top, filters = view
    training = "train_tok_s" in frame.columns
    speed, length = ("train_tok_s", "max_seq_len") if training else ("decode_tok_s", "max_context")
    rows = {name: frame[name].to_numpy() for name in frame.columns}
    keep = [i for i in range(len(frame)) if _keep(rows, i, filters, speed, length)]
    frame = frame.iloc[keep]
    column, descending = SORT_KEYS[sort]
    column = {"decode_tok_s": speed, "max_context": length}.get(column, column)
    if sort != "params" and column in frame.columns:
        frame = frame.sort_values(column, ascending=not descending, kind="stable", na_position="last",
                                  key=(lambda c: c.astype(str).str.lower()) if column == "model" else None)
    frame = frame.head(top) if top else frame
    frame = frame.assign(model=_short_names([str(m) for m in frame["model"]], console().width))
    return frame.reset_index(drop=True)


def _gpus_label(gpus: int, gpu: str) -> str:
    return f"{gpus} x {gpu}" if gpus > 1 else gpu


def _keep(rows: dict[str, np.ndarray], index: int, filters: list, speed: str, length: str) -> bool:
    import operator

    ops = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
           "!=": operator.ne}
    for item in filters:
        if isinstance(item, str):
            if item not in str(rows["model"][index]).lower():
                return False
            continue
        key, op, number = item
        column = {"speed": speed, "context": length}.get(key, SORT_KEYS[key][0])
        if column not in rows:
            return False
        value = rows[column][index]
        if value is None or (isinstance(value, float) and math.isnan(value)) or not ops[op](float(value), number):
            return False
    return True


def _short_names(names: list[str], width: int) -> list[str]:
    """Model names without the organisation when the terminal is narrow and the names stay unique."""
    if width >= 110:
        return names
    short = [n.split("/", 1)[-1] for n in names]
    return short if len(set(short)) == len(set(names)) else names


def _print_best(args: argparse.Namespace, rows: dict[str, np.ndarray], view: tuple[str, int | None, list],
                gpus: int = 1) -> None:
    """Per model that fits: its recommended format, the others that fit, and how far it stretches; then
    one line on what did not fit.

    ``rows`` are the what_fits columns of one GPU (numpy arrays, text as objects), fitting rows first.
    """
    import numpy as np

    from planner.render import console
    from planner.sizing.summary import not_fitting

    sort, top, filters = view
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
    picked = [(indices[0], ", ".join(str(precision[i]) for i in indices[1:])) for indices in by_model.values()
              if _keep(rows, indices[0], filters, speed, length)]
    column, descending = SORT_KEYS[sort]
    column = {"decode_tok_s": speed, "max_context": length}.get(column, column)
    if column in rows and sort != "params":
        def key(item):
            value = rows[column][item[0]]
            if column == "model":
                return str(value).lower()
            value = float(value) if value is not None else math.nan
            return math.inf if math.isnan(value) else (-value if descending else value)
        picked.sort(key=key)
    shown = picked[:top] if top else picked
    best = np.array([i for i, _ in shown], dtype=np.int64)
    also = np.array([a for _, a in shown], dtype=object)
    out = console()
    view_cols = {name: rows[name][best] for name in ("model", "params_b", "precision")}
    view_cols["model"] = np.array(_short_names([str(m) for m in view_cols["model"]], out.width), dtype=object)
    view_cols["precision"] = np.array([str(p) for p in view_cols["precision"]], dtype=object)
    view_cols["also_fits"] = also
    view_cols.update({name: rows[name][best] for name in ("safe_gib", "headroom_pct", length, "max_batch", speed,
                                                          "note")})
    unknown = "format support unknown on a capacity-only device"
    notes = np.array([str(note) for note in view_cols["note"]], dtype=object)
    capacity_only = bool((notes == unknown).any())
    notes[notes == unknown] = ""
    view_cols["note"] = notes
    if (notes == "").all():
        del view_cols["note"]
    if len(best) and np.isnan(view_cols[speed].astype(float)).all():
        del view_cols[speed]
    if training:
        rule = "precision = the fitting format with the most bits per weight"
    else:
        rule = "precision = recommended format (fitplan fits --explain for the rule)"
    sessions = "" if training else f"sessions = sequences of {args.context:,} tokens at once; "
    caption = (f"GiB = safe bound per GPU; free = headroom; {sessions}{rule}; --all: every row and reason")
    if capacity_only:
        caption = f"{gpu} is capacity-only: format support and speed unknown. " + caption
    if args.explain and not training:
        from planner.sizing.recommend import RULE

        caption += f". Rule: {RULE}"
    total = len(set(rows["model"]))
    users = f"{args.batch} users" if getattr(args, "users", None) else f"batch {args.batch}"
    workload = (f"{args.mode} fine-tuning, sequence {args.context:,}, micro-batch {args.batch}" if training else
                f"context {args.context:,}, {users}, {args.engine}")
    shown_note = f" (showing {len(best)})" if len(best) != len(by_model) else ""
    layout = Layout(labels=LABELS, steps=STEPS)
    print_columns(view_cols, title=f"{len(by_model)} of {total} models fit{shown_note} on {_gpus_label(gpus, gpu)} "
                  f"({usable:.1f} GiB usable each), {workload}; memory in GiB",
                  caption=caption, formats={**TABLE_FORMATS, "params_b": "{:.1f}B"}, layout=layout)
    if args.explain and "note" in view_cols:
        for model, note in zip(view_cols["model"], view_cols["note"]):
            if note:
                out.print(f"note: {model}: {note}", highlight=False, markup=False)
    line = not_fitting(rows).line()
    if line:
        hint = "" if training or getattr(args, "ram", None) else "; --ram GB for offload" + (
            ", --gpus N to split" if gpus == 1 else "")
        out.print(line + hint, soft_wrap=False, overflow="fold", highlight=False, markup=False)


def _offload(args: argparse.Namespace, rows: dict[str, np.ndarray], gpus: int, host_bandwidth: float | None):
    from planner.sizing.offload import offload_modes

    fitting = {str(m) for m, f in zip(rows["model"], rows["fits"]) if f}
    missing = [m for m in dict.fromkeys(str(m) for m in rows["model"]) if m not in fitting]
    return offload_modes(args.gpu, args.ram, missing, gpus=gpus, context=args.context, batch=args.batch,
                         kv_dtype=args.kv_dtype, host_bandwidth_gbps=host_bandwidth)


def _print_offload(args: argparse.Namespace, rows: dict[str, np.ndarray], gpus: int,
                   host_bandwidth: float | None) -> None:
    """With --ram: the models that do not fit, each with its run modes partly in RAM, fastest first."""
    if args.ram is None:
        return
    from planner.memory.devices import resolve_gpu
    from planner.sizing.offload import host_links

    modes = _offload(args, rows, gpus, host_bandwidth)
    links = host_links(resolve_gpu(args.gpu), args.ram, host_bandwidth)
    _, top, filters = _view_options(args)
    modes = [o for o in modes if all(f in o.model.lower() for f in filters if isinstance(f, str))]
    if top:
        keep = list(dict.fromkeys(o.model for o in modes))[:top]
        modes = [o for o in modes if o.model in keep]
    fitting = {str(m) for m, f in zip(rows["model"], rows["fits"]) if f}
    missing = len({str(m) for m in rows["model"]} - fitting)
    print_offload_modes(modes, links, f"of {len(set(o.model for o in modes))} of the {missing} models that do not "
                                      "fit on the GPU")


def print_offload_modes(modes, links, what: str) -> None:
    """A table of ``planner.sizing.offload.OffloadMode`` rows (``fits --ram``, ``estimate --ram``)."""
    import numpy as np

    from planner.render import console
    from planner.sizing.offload import MODES

    out = console()
    if not modes:
        out.print(f"offload: no run mode fits with {links.ram_gib:g} GiB RAM either", highlight=False)
        return
    names = _short_names([o.model for o in modes], out.width)
    first = [i == 0 or modes[i].model != modes[i - 1].model for i in range(len(modes))]
    upper = any(o.speed_upper_bound for o in modes)
    columns = {
        "model": np.array([n if f else "" for n, f in zip(names, first)], dtype=object),
        "mode": np.array([o.mode for o in modes], dtype=object),
        "precision": np.array([o.precision for o in modes], dtype=object),
        "gpu_gib": np.array([o.gpu_gib for o in modes]),
        "host_gib": np.array([o.host_gib for o in modes]),
        "decode_tok_s": np.array([o.decode_tok_s if o.decode_tok_s is not None else np.nan for o in modes]),
        "how": np.array([o.how for o in modes], dtype=object),
    }
    if len(set(names)) == 1:
        del columns["model"]  # one model: it is in the title
    speed_note = ("tok/s <= : upper bound, the GPU part is unknown on a capacity-only GPU (the RAM part alone)"
                  if upper else "tok/s = decode, GPU part + RAM part (+ PCIe copies)")
    legend = "; ".join(f"{k}: {v.split(':')[0] if ':' in v else v}" for k, v in MODES.items())
    caption = (f"{speed_note}; RAM {links.host_bandwidth_gbps:g} GB/s x {links.host_efficiency:g}, PCIe {links.pcie_gen} "
               f"x16 {links.pcie_gbps:g} GB/s x {links.pcie_efficiency:g}; {links.reserved_gib:g} GiB RAM kept for the "
               f"OS. Modes: {legend}. --json for every figure and source")
    labels = {**LABELS, "decode_tok_s": "tok/s <=" if upper else "tok/s"}
    steps = (("shrink", "how"), ("drop", "how"), ("shrink", "model"))
    print_columns(columns, title=f"With {links.ram_gib:g} GiB RAM ({links.usable_ram_gib:g} usable): run modes {what}",
                  caption=caption, formats={**TABLE_FORMATS, "decode_tok_s": "{:,.1f}"},
                  layout=Layout(labels=labels, steps=steps))
