"""The ranked trade-off table as Markdown that fits 80 columns (``table.md``, ``report.md``).

The full table (every column of ``search.results``) is in ``table.csv`` and ``table.json``; the Markdown
table holds the columns the terminal prints (``fitplan search`` / ``results``): rank, strategy, predicted
quality and memory, and either speed and cost (a predicted search) or the measured columns next to the
predicted ones (a closed loop). Like the terminal table it keeps the answer whole: when the lines would be
wider than ``width``, the least important columns go first (basis, cost or latency, speedup), then the
strategy cells are cut with "…", and every cut strategy is written out in full below the table, wrapped
to the same width. Missing values are "-", booleans "yes"/"no".
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

WIDTH = 80
# (column, header, format) in the order printed; the terminal table uses the same (search.commands).
PREDICTED: tuple[tuple[str, str, str | None], ...] = (
    ("rank", "#", None), ("strategy", "strategy", None), ("quality_retained_pct", "qual%", "{:.1f}"),
    ("basis", "basis", None), ("memory_gib", "GiB", "{:.2f}"), ("speedup", "x", "{:.2f}"),
    ("usd_per_1m_tokens", "$/1M", "{:.3g}"), ("feasible", "ok", None))
# Deployment target local: no price; the executors' timed forward instead.
LOCAL_SWAP = {"usd_per_1m_tokens": ("latency_ms", "ms", "{:,.0f}")}
MEASURED: tuple[tuple[str, str, str | None], ...] = (
    ("rank", "#", None), ("strategy", "strategy", None), ("quality_retained_pct", "qual%", "{:.1f}"),
    ("measured_quality_retained_pct", "m.qual%", "{:.1f}"), ("memory_gib", "GiB", "{:.2f}"),
    ("measured_memory_gib", "m.GiB", "{:.3f}"), ("measured_status", "run", None), ("feasible", "ok", None))
# What goes first when a table is too wide (printed headers), then the strategy column is cut.
GIVE_UP = ("basis", "$/1M", "ms", "x")
MIN_STRATEGY_WIDTH = 16


def compact_columns(table: "pd.DataFrame", request: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """The (column, header, format) shown for ``table``: MEASURED when anything was executed, else
    PREDICTED (with latency for cost on deployment target ``local``)."""
    if "measured_status" in table and table["measured_status"].notna().any():
        return list(MEASURED)
    local = (request.get("constraints") or {}).get("deployment_target") == "local"
    return [LOCAL_SWAP.get(c, (c, h, f)) if local else (c, h, f) for c, h, f in PREDICTED]


def cell(column: str, value: Any, fmt: str | None) -> str:
    """One shown cell: '-' for a missing value, yes/no, the basis without its count ('prior (42)' ->
    'prior'), the run status without its reason ('failed: ...' -> 'failed'; the reason is in why_not)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if column == "basis":
        return str(value).split(" ")[0]
    if column == "measured_status":
        return str(value).split(":")[0]
    if fmt:
        try:
            return fmt.format(value)
        except (ValueError, TypeError):
            return str(value)
    return str(value)


def _render(headers: list[str], cells: list[list[str]], numeric: list[bool], widths: dict[int, int]
            ) -> tuple[list[str], list[tuple[int, int]]]:
    """The Markdown lines of the kept columns (``widths``: index -> width; numbers right-aligned, text
    cut with "…") and the (row, column) of every cell cut."""
    keep = list(widths)

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i])
                                 for i, v in zip(keep, values)) + " |"

    lines = [line([headers[i] for i in keep]),
             "|" + "|".join(("-" * (widths[i] + 1) + ":") if numeric[i] else "-" * (widths[i] + 2) for i in keep) + "|"]
    cut = []
    for r, row in enumerate(cells):
        values = []
        for i in keep:
            text = row[i]
            if len(text) > widths[i]:
                text = text[:max(widths[i] - 1, 0)] + "…"
                cut.append((r, i))
            values.append(text)
        lines.append(line(values))
    return lines, cut


def _wrap(items: list[str], width: int) -> list[str]:
    return [textwrap.fill(item, width, subsequent_indent="  ", break_on_hyphens=False) for item in items]


def markdown_table(frame: "pd.DataFrame", columns: list[tuple[str, str, str | None]], *, width: int = WIDTH) -> str:
    """``frame``'s ``columns`` as a Markdown table no wider than ``width`` (see the module docstring)."""
    from planner.render import Layout, fit_to_width

    shown = [(c, h, f) for c, h, f in columns if c in frame.columns]
    headers = [h for _, h, _ in shown]
    cells = [[cell(c, value, f).replace("|", "\\|") for (c, _, f), value in zip(shown, row)]
             for row in frame[[c for c, _, _ in shown]].itertuples(index=False)]
    steps = tuple(("drop", h) for h in GIVE_UP) + (("shrink", "strategy"),)
    widths = fit_to_width(headers, cells, width, Layout(steps=steps, min_width=MIN_STRATEGY_WIDTH))
    numeric = [f is not None or c == "rank" for c, _, f in shown]
    lines, cut = _render(headers, cells, numeric, widths)
    strategy = headers.index("strategy") if "strategy" in headers else None
    rank = headers.index("#") if "#" in headers else None
    cut = [(cells[r][rank] if rank is not None else "?", cells[r][i].replace("\\|", "|"))
           for r, i in cut if i == strategy]
    if cut:
        lines += ["", "Strategies cut above, in full:", ""]
        lines += _wrap([f"- #{number}: {text}" for number, text in cut], width)
    return "\n".join(lines)


def frame_cell(value: Any) -> str:
    """One cell of a generic table: '-' for a missing value, yes/no, numbers to 3 significant digits
    (thousands separated; whole above 1,000)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def frame_markdown(frame: "pd.DataFrame", *, labels: dict[str, str] | None = None,
                   steps: tuple[tuple[str, str], ...] = (),
                   elsewhere: str = "the HTML report", width: int = WIDTH) -> str:
    """Any DataFrame as a Markdown table no wider than ``width``, the answer kept whole.

    Headers are shortened by ``labels`` (column -> header). While the table is too wide, ``steps`` are
    taken in order (``("drop", column)`` leaves a column out, ``("shrink", column)`` cuts a text column with
    "…"; see planner.render.Layout), then the other text columns are cut, the widest first; every cut cell is written out in full below the table, and a line names the
    columns left out (they are in ``elsewhere``). A one-row table is printed as "field | value" rows."""
    from planner.render import Layout, fit_to_width

    labels = labels or {}
    names = [str(c) for c in frame.columns]
    headers = [labels.get(c, c) for c in names]
    cells = [[frame_cell(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
    numeric = [frame[c].dtype.kind in "iuf" for c in frame.columns]
    if len(cells) == 1:  # field | value
        cells = [[n, v] for n, v in zip(names, cells[0])]
        headers, numeric, names, steps = ["field", "value"], [False, False], ["field", "value"], ()
    natural = {i: max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)}
    text = sorted((i for i in natural if not numeric[i]), key=lambda i: -natural[i])
    steps = tuple((action, labels.get(c, c)) for action, c in steps) + tuple(("shrink", headers[i]) for i in text)
    widths = fit_to_width(headers, cells, width, Layout(steps=steps))
    lines, cut = _render(headers, cells, numeric, widths)
    if cut:
        lines += ["", "Cut above, in full:", ""]
        full = [(cells[r][0].replace("\\|", "|"), headers[i], cells[r][i].replace("\\|", "|")) for r, i in cut]
        lines += _wrap([f"- {row}: {text}" if len(frame) == 1 else f"- {text}" if header == headers[0] else
                        f"- {names[0]} {row}, {header}: {text}" for row, header, text in full], width)
    dropped = [names[i] for i in natural if i not in widths]
    if dropped:
        lines += ["", *_wrap([f"Only in {elsewhere}: {', '.join(dropped)}."], width)]
    return "\n".join(lines)


__all__ = ["MEASURED", "PREDICTED", "compact_columns", "frame_markdown", "markdown_table"]


# Predictor quality per round (``search.results.rounds_frame``): readable headers (the HTML report's), then
# the Markdown's short headers and give-up order (``frame_markdown``), for table.md and report.md alike.
ROUND_HEADERS = {"round": "round", "predictor": "predictor", "fit_records": "fitted on", "held_out": "held out",
                 "quality_loss_mae": "quality MAE (points)", "quality_spearman": "Spearman",
                 "quality_coverage": "in 80% interval", "memory_error_pct": "memory error %",
                 "latency_error_pct": "latency error %", "executed": "executed", "failed": "failed",
                 "evaluations": "evaluations so far", "recommendation": "recommendation",
                 "recommendation_verified": "verified", "seconds": "seconds"}
ROUND_TABLE: tuple[dict[str, str], tuple[tuple[str, str], ...]] = (
    {"round": "#", "fitted on": "fit", "held out": "held", "quality MAE (points)": "MAE",
     "in 80% interval": "in 80%", "memory error %": "mem err%", "latency error %": "lat err%",
     "executed": "ran", "evaluations so far": "evals", "seconds": "s"},
    (*(("drop", c) for c in ("seconds", "evaluations so far", "failed", "executed", "verified")),
     ("shrink", "predictor"), ("drop", "fitted on"), ("drop", "recommendation"),
     *(("drop", c) for c in ("latency error %", "memory error %", "in 80% interval"))))


def rounds_markdown(rounds: "pd.DataFrame", elsewhere: str, width: int = WIDTH) -> str:
    """The round reports (``search.results.rounds_frame``) as Markdown within ``width`` columns; the
    columns left out are named as being in ``elsewhere``."""
    labels, steps = ROUND_TABLE
    return frame_markdown(rounds.rename(columns=ROUND_HEADERS), labels=labels, steps=steps, elsewhere=elsewhere,
                          width=width)
