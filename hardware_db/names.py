"""Name normalisation and "did you mean" suggestions, shared by every catalog in fitplan.

Users type GPU and model names in many spellings ("RTX-4090", "rtx 4090", "A100 80GB"); the catalogs
compare names through :func:`normalize_name` and suggest spellings with :func:`close_matches`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

_SEPARATORS = re.compile(r"[\s_\-/.()]+")
_SEPARATORS_KEEPING_DOTS = re.compile(r"[\s_\-/()]+")


def normalize_name(name: str, *, keep_dots: bool = False) -> str:
    """Lower-case ``name`` and drop spaces, dashes, underscores, slashes, brackets (and dots).

    Model names keep their dots (``keep_dots=True``) because "opt-1.3b" and "opt-13b" differ.

    >>> normalize_name("NVIDIA H100-SXM")
    'nvidiah100sxm'
    """
    pattern = _SEPARATORS_KEEPING_DOTS if keep_dots else _SEPARATORS
    return pattern.sub("", name.strip().lower())


def close_matches(name: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """Return up to ``limit`` candidates that look like ``name`` (best first).

    Candidates are compared on their normalised form; a candidate containing the whole normalised
    query (or contained in it) is ranked before fuzzy matches, so "4099" still suggests "RTX 4090".
    """
    query = normalize_name(name)
    by_key: dict[str, str] = {}
    for candidate in candidates:
        by_key.setdefault(normalize_name(candidate), candidate)
    scored = []
    for key, candidate in by_key.items():
        ratio = difflib.SequenceMatcher(None, query, key).ratio()
        if query and (query in key or key in query):
            ratio += 0.5
        scored.append((ratio, len(key), candidate))
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [candidate for ratio, _, candidate in scored[:limit] if ratio >= 0.45]


def did_you_mean(name: str, candidates: Iterable[str], limit: int = 3) -> str:
    """Format the suggestion sentence used in error messages ('' when nothing is close)."""
    matches = close_matches(name, candidates, limit)
    if not matches:
        return ""
    return " Did you mean " + ", ".join(repr(m) for m in matches) + "?"
