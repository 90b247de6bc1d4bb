"""The search package's ``fitplan`` commands (``search``, ``results``, ``report``, ``lab``), registered through the
``fitplan.commands`` entry point (see ``planner.cli``): the planner's CLI never imports this package.

Registering only builds argparse parsers; Optuna is imported when a command runs.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the search package's commands to the ``fitplan`` parser (order = order in ``fitplan --help``)."""
    from search import commands, lab_cli, worker

    for add in (commands.register_search, commands.register_results, commands.register_report, worker.register,
                lab_cli.register):
        add(subparsers)
