"""Print results for people (rich tables) or machines (``--json``, ``--csv``): shared by every command.

Commands hand over a pandas DataFrame (tables) or a dict (single objects) and the chosen format; this
module is the only place that knows how each format looks. Tables can also come as numpy columns
(:func:`print_columns`), so a command that has no DataFrame does not import pandas.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


def add_format_flags(parser: argparse.ArgumentParser, *, csv: bool = True, markdown: bool = False) -> None:
    """Add the mutually exclusive ``--json`` / ``--csv`` (/ ``--md``) flags to a sub-command parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", dest="output", action="store_const", const="json",
                       help="print machine-readable JSON")
    if csv:
        group.add_argument("--csv", dest="output", action="store_const", const="csv",
                           help="print CSV")
    if markdown:
        group.add_argument("--md", dest="output", action="store_const", const="markdown",
                           help="print Markdown")
    parser.set_defaults(output="table")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _jsonable(value.item())
    if _is_pandas_missing(value):
        return None
    return value


def _is_pandas_missing(value: Any) -> bool:
    """``pd.NA`` / ``pd.NaT``, checked without importing pandas: if pandas is not loaded, no value is one."""
    pd = sys.modules.get("pandas")
    return pd is not None and (value is pd.NA or value is pd.NaT)


def print_json(obj: Any) -> None:
    json.dump(_jsonable(obj), sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_frame(frame: pd.DataFrame, output: str, *, title: str | None = None,
                formats: dict[str, str] | None = None, caption: str | None = None,
                layout: Layout | None = None) -> None:
    """Print ``frame`` as a rich table, JSON records or CSV.

    ``formats`` maps column names to format specs (e.g. ``{"memory_gb": "{:.0f}"}``) for the table
    view only; JSON and CSV always carry the raw values. Missing values print as "-" in tables,
    ``null`` in JSON and empty cells in CSV.
    """
    if output == "json":
        print_json(frame.to_dict(orient="records"))
        return
    if output == "csv":
        frame.to_csv(sys.stdout, index=False)
        return
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    numeric = [is_numeric_dtype(frame[c]) and not is_bool_dtype(frame[c]) for c in frame.columns]
    _print_table([str(c) for c in frame.columns], numeric, frame.itertuples(index=False), title=title,
                 caption=caption, formats=formats, layout=layout)


def print_columns(columns: dict[str, np.ndarray], *, title: str | None = None,
                  formats: dict[str, str] | None = None, caption: str | None = None,
                  layout: Layout | None = None) -> None:
    """Print equal-length numpy columns as a rich table, like :func:`print_frame` prints a DataFrame."""
    numeric = [values.dtype.kind in "iufc" for values in columns.values()]
    rows = zip(*(values.tolist() for values in columns.values()))
    _print_table(list(columns), numeric, rows, title=title, caption=caption, formats=formats, layout=layout)


@dataclass(frozen=True)
class Layout:
    """How a table fits the console width: one line per row, the answer kept whole.

    ``labels``: column -> shorter header (e.g. ``{"safe_gib": "GiB"}``). ``steps``: what to give up,
    in order, while the table is wider than the console: ``("drop", column)`` leaves a column out,
    ``("shrink", column)`` cuts a text column (cells end in "…") down to ``min_width`` characters (or
    its header). Columns named in no step are the answer and are always printed whole.
    """

    labels: dict[str, str] = field(default_factory=dict)
    steps: tuple[tuple[str, str], ...] = ()
    min_width: int = 12


def table_width(widths: Sequence[int]) -> int:
    """Characters a rich table with the default box takes for columns of these widths:
    a border, then per column one space of padding on each side and a border."""
    return 1 + sum(w + 3 for w in widths)


def fit_to_width(headers: list[str], cells: list[list[str]], width: int, layout: Layout) -> dict[int, int]:
    """{column index: width} of the columns kept so the table fits ``width`` characters (see :class:`Layout`).

    ``headers`` are the printed headers; the steps name columns by their key in ``layout.labels``'s domain
    or by the printed header."""
    natural = {i: max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)}
    widths = dict(natural)
    index = {h: i for i, h in enumerate(headers)}
    index.update({key: index[label] for key, label in layout.labels.items() if label in index})
    for action, name in layout.steps:
        excess = table_width(list(widths.values())) - width
        if excess <= 0:
            break
        i = index.get(name)
        if i is None or i not in widths:
            continue
        if action == "drop":
            del widths[i]
        else:
            floor = min(widths[i], max(layout.min_width, len(headers[i])))
            widths[i] = max(floor, widths[i] - excess)
    # Later drops may have freed room: give it back to the columns cut, the last one cut first.
    for i in reversed([index.get(name) for action, name in layout.steps if action == "shrink"]):
        slack = width - table_width(list(widths.values()))
        if i in widths and slack > 0:
            widths[i] = min(natural[i], widths[i] + slack)
    return widths


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def _print_table(headers: list[str], numeric: Sequence[bool], rows: Iterable[Sequence[Any]], *,
                 title: str | None, caption: str | None, formats: dict[str, str] | None,
                 layout: Layout | None = None) -> None:
    """Numbers right-aligned, no cell wrapped; missing values as "-". With a ``layout``, columns are
    dropped or cut so the table fits the console (:class:`Layout`); without one, text columns but the
    first may wrap."""
    from rich.table import Table
    from rich.text import Text

    formats = formats or {}
    cell_formats = [formats.get(header) for header in headers]
    cells = [[_cell(value, fmt) for value, fmt in zip(row, cell_formats)] for row in rows]
    out = console()
    if layout is None:
        keep, widths = list(range(len(headers))), None
    else:
        labelled = [layout.labels.get(h, h) for h in headers]
        kept = fit_to_width(labelled, cells, out.width, Layout(labels=dict(zip(headers, labelled)),
                                                                 steps=layout.steps, min_width=layout.min_width))
        keep, widths = list(kept), list(kept.values())
    table = Table(title=title, caption=caption, show_lines=False, caption_justify="center" if layout is None else "left")
    for position, index in enumerate(keep):
        header, is_number = headers[index], numeric[index]
        label = layout.labels.get(header, header) if layout else header
        if widths is None:
            table.add_column(label, justify="right" if is_number else "left", no_wrap=index == 0 or is_number)
        else:
            table.add_column(label, justify="right" if is_number else "left", no_wrap=True, overflow="ellipsis",
                             min_width=widths[position], max_width=widths[position])
    for row in cells:
        # Text, not str: cell text such as "[source, 2026] ..." is data, not rich markup (and skipping
        # the markup parser makes a large table render faster).
        if widths is None:
            table.add_row(*(Text(row[i]) for i in keep))
        else:
            table.add_row(*(Text(_cut(row[i], w)) for i, w in zip(keep, widths)))
    out.print(table)


def console():
    """A rich console. In a terminal, its width; piped, ``COLUMNS`` when set (so ``COLUMNS=80 fitplan ... |
    less`` is laid out for 80 columns), else 220 so a file keeps whole rows."""
    import os

    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    columns = os.environ.get("COLUMNS", "")
    return Console(width=int(columns) if columns.isdigit() and int(columns) >= 20 else 220)


def _cell(value: Any, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or _is_pandas_missing(value):
        return "-"
    if isinstance(value, bool) or type(value).__name__ in ("bool", "bool_"):  # numpy booleans too
        return "yes" if value else "no"
    if fmt:
        try:
            return fmt.format(value)
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def print_mapping(title: str, items: list[tuple[str, Any]], output: str, payload: Any = None) -> None:
    """Print a key/value view (``show`` commands). ``payload`` is what ``--json`` prints."""
    if output == "json":
        print_json(payload if payload is not None else dict(items))
        return
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in items:
        table.add_row(escape(key), escape(_cell(value, None)))
    console().print(table)
