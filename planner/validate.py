"""Checks every entry point applies to what users pass, each ending in one clear line.

The CLI and the Python API share them, so that ``fits`` rejects what ``estimate`` rejects and a
string where a list belongs is not split into characters. Messages name what the user typed: the flag
on the command line (``--max-memory-gb``), the keyword in Python (``precisions=``).
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError


def require_finite(name: str, value: Any) -> float:
    """``value`` as a float, or InvalidRequestError naming ``name`` when it is NaN, infinite or no number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise InvalidRequestError(f"{name} must be a finite number, got {value!r}.")
    return float(value)


def reject_non_finite_options(options: dict[str, Any]) -> None:
    """InvalidRequestError naming the keyword when an option (``training_tokens=nan``) is NaN or infinite."""
    for key, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRequestError(f"{key} must be a finite number, got {value!r}.")


def name_list(value: Any, keyword: str) -> tuple[Any, ...] | None:
    """A list argument as a tuple: None stays None (= all), one string is a list of one.

    An empty list is an error rather than a silent "all": ``what_fits(gpu, models=[])`` asks for
    nothing, and answering with every model hides the mistake.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Iterable) or isinstance(value, dict):
        if isinstance(value, dict):
            raise InvalidRequestError(f"{keyword}= takes a list of names, got a dict.")
        return (value,)
    items = tuple(value)
    if not items:
        raise InvalidRequestError(f"{keyword}= is empty: pass None (the default) for all, or at least one name.")
    return items


def reject_non_finite_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """InvalidRequestError naming the flag when a parsed number is NaN or infinite (``--mfu nan``).

    argparse's ``type=float`` accepts 'nan' and 'inf'; no fitplan flag means either, so they are
    rejected here once for every command, including the ones plugins register.
    """
    flags = _flags_by_dest(parser)
    for dest, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, float) and not math.isfinite(item):
                flag = flags.get(dest, "--" + dest.replace("_", "-"))
                raise InvalidRequestError(f"{flag} must be a finite number, got {item!r}.")


def flags_by_dest(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option's destination (``lora_rank``) -> the flag users type (``--lora-rank``), all sub-commands."""
    return _flags_by_dest(parser)


def name_flags(message: str, flags: dict[str, str], fields: dict[str, str] | None = None) -> str:
    """Rewrite the Python keywords a library message names (``train_precision='fp16-mixed'``,
    ``option 'gpu_memory_utilization'``) as the command-line flags (``--train-precision fp16-mixed``).

    Only identifiers with an underscore are rewritten (``lora_rank``, not ``model``), so plain words in a
    message stay as they are. ``fields`` maps the fields of a typed object a command builds from its flags
    (``level`` of a SparsitySpec -> ``--sparsity``; a command declares it with
    ``parser.set_defaults(field_flags={...})``); those are rewritten whatever their spelling.
    """
    import re

    for dest, flag in [*(fields or {}).items(), *flags.items()]:
        if dest not in message or ("_" not in dest and dest not in (fields or {})):
            continue
        message = re.sub(rf"\b{re.escape(dest)}\s*=\s*", flag + " ", message)
        message = re.sub(rf"(['\"]){re.escape(dest)}\1", flag, message)
        message = re.sub(rf"(?<![\w.-]){re.escape(dest)}(?![\w-])", flag, message)
    return message


def _flags_by_dest(parser: argparse.ArgumentParser) -> dict[str, str]:
    found: dict[str, str] = {}
    stack = [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.option_strings:
                longest = max(action.option_strings, key=len)
                found.setdefault(action.dest, longest)
    return found


def output_directory(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as a directory results can be written to (created if missing), or InvalidRequestError.

    Checked before any work starts, so a run never fails at the end for want of a place to save.
    """
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise InvalidRequestError(f"{flag} {str(path)!r} is a file; give a directory for the results.")
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InvalidRequestError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, not a directory.")
    try:  # create it and write a probe: permission bits alone do not say (root, read-only mounts, /proc)
        import tempfile

        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as error:
        raise InvalidRequestError(f"{flag} {str(path)!r} is not writable ({error.strerror or error}).") from None
    return target


def reject_request_wide_errors(errors: Sequence[str | None], what: str) -> None:
    """Raise when every row of a sweep failed: with the most common message.

    A sweep in which nothing could be computed is an invalid request (``lora_rank 0``, a KV dtype the
    engine lacks), not "0 of N models fit": it answers with the error ``estimate`` gives.
    """
    if not errors or not all(errors):
        return
    counts: dict[str, int] = {}
    for error in errors:
        counts[str(error)] = counts.get(str(error), 0) + 1
    common = max(counts, key=counts.__getitem__)
    raise InvalidRequestError(f"{what}: {common}" if what else common)

