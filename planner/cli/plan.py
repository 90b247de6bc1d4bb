"""``fitplan plan MODEL``: rank compression strategies under constraints, explain the answer.

Prints the setting and the uncompressed baseline, the top feasible candidates (predicted quality
retained with its 80% interval and basis, memory per GPU, GPUs needed, decode tokens/s, speedup,
$ per 1M tokens), the recommendation with its reason, the nearest misses (what they violate, by how
much, and the one change that would admit them) and, when nothing is feasible, the binding limit and
the relaxations that would admit a candidate. ``--json`` / ``--csv`` / ``--md`` print the whole table
(``--all``: infeasible candidates too); the columns are ``planner.planning.TABLE_COLUMNS``.
"""

from __future__ import annotations

import argparse
import os

from planner.planning.flags import add_constraint_flags, constraints_from_args
from planner.render import add_format_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan", help="rank compression strategies under memory / quality / speed / cost limits",
        description="Enumerate quantization x sparsity x distillation x KV-cache strategies the hardware runs, "
                    "predict each one's quality, memory, speed and cost, and rank those meeting the limits.")
    parser.add_argument("model", metavar="MODEL",
                        help="registry name or alias, a directory with config.json, or a config.json path")
    add_constraint_flags(parser)
    parser.add_argument("--profile", metavar="FILE", help="sensitivity profile JSON of this model (sharpens quality)")
    parser.add_argument("--calibration", metavar="DIR", help="calibration store of measured results")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="rows of the table (default 10)")
    parser.add_argument("--misses", type=int, default=5, metavar="N", help="nearest misses shown (default 5)")
    parser.add_argument("--all", action="store_true", help="--json/--csv/--md: every candidate, not only feasible")
    add_format_flags(parser, markdown=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from planner.errors import InvalidRequestError
    from planner.planning import plan

    if args.top < 1 or args.misses < 0:
        raise InvalidRequestError("--top must be at least 1 and --misses at least 0.")
    constraints = constraints_from_args(args)
    profile, calibration = load_accuracy_inputs(args.profile, args.calibration)
    result = plan(args.model, constraints, objective=args.objective, profile=profile, calibration=calibration,
                  misses=args.misses)
    which = "all" if args.all else "feasible"
    if args.output == "json":
        print(result.to_json(which))
    elif args.output == "csv":
        print(result.to_csv(which), end="")
    elif args.output == "markdown":
        print(result.to_markdown(which, limit=None), end="")
    else:
        print_plan(result, top=args.top)
    return 0


def load_accuracy_inputs(profile_path: str | None, calibration_dir: str | None):
    """The sensitivity profile and calibration store named on the command line (None when not given)."""
    profile = calibration = None
    if profile_path is not None:
        from planner.accuracy import SensitivityProfile

        profile = SensitivityProfile.load(profile_path)
    if calibration_dir is not None:
        from planner.accuracy import CalibrationStore

        calibration = CalibrationStore.load(calibration_dir)
    return profile, calibration


def _console():
    """A rich console that honours COLUMNS (tables are written for 80 columns)."""
    from rich.console import Console

    from planner.render import console

    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns)) if columns.isdigit() else console()


def quality_text(retained: float, low: float, high: float) -> str:
    """'99.4 [97.4-100]': a predicted quality retained and its 80% interval, short enough for 80 columns."""
    def pct(value: float) -> str:
        return "100" if value >= 99.95 else f"{value:.1f}"
    return f"{pct(retained)} [{pct(low)}-{pct(high)}]"


def _number(value, spec: str) -> str:
    if value is None or value != value:
        return "-"
    return spec.format(value)


def print_plan(result, *, top: int) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    c = result.constraints
    base = result.baseline
    console.print(escape(f"{result.model}: {c.summary()}"), highlight=False)
    speed = ("no speed (the device has no bandwidth)" if base["decode_tokens_per_s"] is None
             else f"{base['decode_tokens_per_s']:,.0f} tok/s decode")
    where = "per GPU"
    if c.is_local:  # the executors' run on this machine: its peak memory and timed forward
        where = "peak"
        speed = ("latency not predicted" if base.get("latency_ms") is None
                 else f"forward {base['latency_ms']:,.0f} ms ({base['prefill_tokens_per_s']:,.0f} tok/s)")
    console.print(escape(f"baseline {base['format']}: {base['memory_gib']:.1f} GiB {where}, {speed}; "
                         f"{result.n_candidates} strategies, {result.n_feasible} feasible, objective "
                         f"{result.objective}"), highlight=False)
    table = result.table("feasible").head(top)
    if len(table):
        view = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1), collapse_padding=True)
        for header, justify in (("#", "right"), ("strategy", "left"), ("retained % [80%]", "left"),
                                ("basis", "left"), ("GiB", "right"), ("GPUs", "right"), ("tok/s", "right"),
                                ("speed", "right"), ("$/1M", "right")):
            view.add_column(header, justify=justify, overflow="fold")
        for row in table.itertuples(index=False):
            view.add_row(str(row.rank), escape(row.strategy), quality_text(row.retained_pct, row.retained_low_pct, row.retained_high_pct), row.basis,
                         f"{row.memory_gib:.1f}", str(row.gpus_needed), _number(row.tokens_per_s, "{:,.0f}"),
                         _number(row.speedup, "{:.2f}x"), _number(row.usd_per_1m_tokens, "{:.2f}"))
        console.print(view)
        if result.n_feasible > top:
            console.print(f"... {result.n_feasible - top} more feasible (--top N, or --csv / --json for all)",
                          highlight=False)
    if result.recommended is not None:
        console.print(escape(f"Recommended: {result.recommended.summary}"), style="bold", highlight=False)
        console.print(escape(f"  {result.reason}"), highlight=False)
        compact = result.recommended.strategy.model_dump_json(exclude_defaults=True)
        console.print(escape(f"  strategy: {compact}"), highlight=False)
        for note in result.recommended.notes:
            console.print(escape(f"  {note}"), highlight=False)
    else:
        console.print("No strategy meets every limit.", style="bold", highlight=False)
        console.print(escape(f"  {result.reason}"), highlight=False)
    if result.nearest_misses:
        console.print("Nearest misses:", style="bold", highlight=False)
        for miss in result.nearest_misses:
            console.print(escape(f"  {miss.candidate.summary}: {miss.explanation}"), highlight=False)
    if result.relaxations and result.recommended is None:
        console.print("Relaxations that admit a candidate:", style="bold", highlight=False)
        for text in result.relaxations:
            console.print(escape(f"  {text}"), highlight=False)
    pareto = int(result.table("pareto").shape[0])
    if pareto:
        third = "$/1M tokens" if result.objective == "cost" else "tokens/s"
        console.print(f"Pareto front: {pareto} candidates (quality loss vs memory vs {third}).", highlight=False)
    if result.excluded_formats:
        left = "; ".join(f"{name}: {why}" for name, why in result.excluded_formats.items())
        console.print(escape(f"Left out: {left}"), highlight=False)
    for note in result.notes:
        console.print(escape(f"note: {note}"), highlight=False)
