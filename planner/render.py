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
                formats: dict[str, str] | None = None, caption: str | None = None) -> None:
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
                 caption=caption, formats=formats)


def print_columns(columns: dict[str, np.ndarray], *, title: str | None = None,
                  formats: dict[str, str] | None = None, caption: str | None = None) -> None:
    """Print equal-length numpy columns as a rich table, like :func:`print_frame` prints a DataFrame."""
    numeric = [values.dtype.kind in "iufc" for values in columns.values()]
    rows = zip(*(values.tolist() for values in columns.values()))
    _print_table(list(columns), numeric, rows, title=title, caption=caption, formats=formats)


def _print_table(headers: list[str], numeric: Sequence[bool], rows: Iterable[Sequence[Any]], *,
                 title: str | None, caption: str | None, formats: dict[str, str] | None) -> None:
    """Numbers right-aligned and never wrapped (the first column neither); missing values as "-"."""
    from rich.table import Table
    from rich.text import Text

    formats = formats or {}
    table = Table(title=title, caption=caption, show_lines=False)
    for index, (header, is_number) in enumerate(zip(headers, numeric)):
        table.add_column(header, justify="right" if is_number else "left", no_wrap=index == 0 or is_number)
    cell_formats = [formats.get(header) for header in headers]
    for row in rows:
        # Text, not str: cell text such as "[source, 2026] ..." is data, not rich markup (and skipping
        # the markup parser makes a large table render faster).
        table.add_row(*(Text(_cell(value, fmt)) for value, fmt in zip(row, cell_formats)))
    console().print(table)


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
    if isinstance(value, bool):
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
