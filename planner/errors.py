"""Errors fitplan raises for user mistakes.

Every user-facing mistake raises a subclass of :class:`FitplanError` (a ``ValueError``) whose message
says what was wrong, what is allowed and, for names, the closest valid spellings. The CLI turns these
into one line on stderr and exit code 2; it never prints a traceback for them.
"""

from __future__ import annotations


class FitplanError(ValueError):
    """Base class of every error caused by the user's input."""


class UnknownModelError(FitplanError, LookupError):
    """A model name, path or hub id could not be resolved to a model specification."""


class InvalidConfigError(FitplanError):
    """A model ``config.json`` (or dict) is missing fields or holds impossible values."""


class OfflineError(FitplanError):
    """A Hugging Face hub id was given but the hub cannot be reached (or offline mode is on)."""


class UnsupportedError(FitplanError):
    """The request is well formed but not supported (e.g. a format the chosen GPU cannot run)."""


class InvalidRequestError(FitplanError):
    """A size, count or option is out of range (zero/negative batch, context beyond the model, ...)."""


class UnknownFormatError(FitplanError, LookupError):
    """A precision/format or KV-cache dtype name is not in the format registry."""
