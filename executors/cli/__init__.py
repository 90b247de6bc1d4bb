"""The executors' ``fitplan`` commands (``run``, ``profile``, ``export``, ``fixtures``), registered through the
``fitplan.commands`` entry point (see ``planner.cli``): the planner's CLI never imports this package.

Registering only builds argparse parsers; torch is imported when a command runs.
"""

from __future__ import annotations

import argparse

from executors.cli import export, fixtures, profile, run

# Order = order in `fitplan --help`.
COMMAND_MODULES = (run, profile, export, fixtures)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the executors' commands to the ``fitplan`` parser."""
    for module in COMMAND_MODULES:
        module.register(subparsers)
