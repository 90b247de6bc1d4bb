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


def markdown_table(frame: "pd.DataFrame", columns: list[tuple[str, str, str | None]], *, width: int = WIDTH) -> str:
    """``frame``'s ``columns`` as a Markdown table no wider than ``width`` (see the module docstring)."""
    from planner.render import Layout, fit_to_width

    shown = [(c, h, f) for c, h, f in columns if c in frame.columns]
    headers = [h for _, h, _ in shown]
    cells = [[cell(c, value, f).replace("|", "\\|") for (c, _, f), value in zip(shown, row)]
             for row in frame[[c for c, _, _ in shown]].itertuples(index=False)]
    steps = tuple(("drop", h) for h in GIVE_UP) + (("shrink", "strategy"),)
    widths = fit_to_width(headers, cells, width, Layout(steps=steps, min_width=MIN_STRATEGY_WIDTH))
    keep = list(widths)
    numeric = {i: shown[i][2] is not None or shown[i][0] == "rank" for i in keep}

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.rjust(widths[i]) if numeric[i] else v.ljust(widths[i])
                                 for i, v in zip(keep, values)) + " |"

    lines = [line([headers[i] for i in keep]),
             "|" + "|".join(("-" * (widths[i] + 1) + ":") if numeric[i] else "-" * (widths[i] + 2) for i in keep) + "|"]
    cut = []
    strategy = headers.index("strategy") if "strategy" in headers else None
    rank = headers.index("#") if "#" in headers else None
    for row in cells:
        values = []
        for i in keep:
            text = row[i]
            if len(text) > widths[i]:
                text = text[:max(widths[i] - 1, 0)] + "…"
                if i == strategy:
                    cut.append((row[rank] if rank is not None else "?", row[i].replace("\\|", "|")))
            values.append(text)
        lines.append(line(values))
    if cut:
        lines += ["", "Strategies cut above, in full:", ""]
        lines += [textwrap.fill(f"- #{number}: {text}", width, subsequent_indent="  ", break_on_hyphens=False)
                  for number, text in cut]
    return "\n".join(lines)


__all__ = ["MEASURED", "PREDICTED", "compact_columns", "markdown_table"]
