"""Print results for people (rich tables) or machines (``--json``, ``--csv``).

Commands hand over a pandas DataFrame (tables) or a dict (single objects) and the chosen format; this
module is the only place that knows how each format looks.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import pandas as pd


def add_format_flags(parser: argparse.ArgumentParser, *, csv: bool = True) -> None:
    """Add the mutually exclusive ``--json`` / ``--csv`` flags to a sub-command parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", dest="output", action="store_const", const="json",
                       help="print machine-readable JSON")
    if csv:
        group.add_argument("--csv", dest="output", action="store_const", const="csv",
                           help="print CSV")
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
    if value is pd.NA or value is pd.NaT:
        return None
    return value


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
    from rich.markup import escape
    from rich.table import Table

    formats = formats or {}
    table = Table(title=title, caption=caption, show_lines=False)
    for index, column in enumerate(frame.columns):
        numeric = pd.api.types.is_numeric_dtype(frame[column]) and not pd.api.types.is_bool_dtype(frame[column])
        table.add_column(str(column), justify="right" if numeric else "left", no_wrap=index == 0 or numeric)
    for row in frame.itertuples(index=False):
        # escape: cell text such as "[source, 2026] ..." is data, not rich markup
        table.add_row(*(escape(_cell(value, formats.get(column))) for column, value in zip(frame.columns, row)))
    _console().print(table)


def _console():
    """A rich console; when stdout is not a terminal (a pipe, a file) tables are not squeezed to 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=220)


def _cell(value: Any, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
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
    _console().print(table)
