"""The search package's ``fitplan`` commands, registered through the ``fitplan.commands`` entry point
(see ``planner.cli``): the planner's CLI never imports this package. Each command module is listed in
``COMMAND_MODULES`` and has ``register(subparsers)``.
"""

from __future__ import annotations

import argparse

# Order = order in `fitplan --help`.
COMMAND_MODULES: tuple = ()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the search package's commands to the ``fitplan`` parser."""
    for module in COMMAND_MODULES:
        module.register(subparsers)
