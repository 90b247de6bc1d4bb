"""Errors raised by the accelerator catalog.

They are ``ValueError`` subclasses so callers can treat them like any other bad input, and the CLI
prints them as one line (exit code 2). ``hardware_db`` does not import ``planner``: the planner depends
on the catalog, not the other way round.
"""

from __future__ import annotations


class CatalogError(ValueError):
    """A catalog file, entry or query is invalid (the message names the file, entry and field)."""


class UnknownAcceleratorError(CatalogError, LookupError):
    """No accelerator has this name or alias (the message lists the closest spellings)."""


class AmbiguousAcceleratorError(CatalogError, LookupError):
    """The query names a family with several catalog entries, e.g. "A100" (40 GB or 80 GB, PCIe or SXM)."""
