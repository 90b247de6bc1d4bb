"""The process catalog: built-in entries plus user files, looked up by name, alias or capacity.

Lookups compare :func:`~hardware_db.names.normalize_name` keys in one dict built once, so "RTX-4090",
"rtx 4090" and "4090" all hit the same entry. A query that is only the start of several entries'
names ("A100": 40 or 80 GB, PCIe or SXM) is ambiguous and raises rather than picking one, because the
choice changes whether a model fits.

User entries (``register``, ``load_user_files``, the ``FITPLAN_HARDWARE`` variable) replace a
catalog entry whose name or alias equals their name (its spellings then lead to the new entry); an
alias that would steal another entry's name is an error. The catalog lives in one module-level slot, filled on first use and cleared by
:func:`reset`.
"""

from __future__ import annotations

import builtins
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hardware_db._errors import AmbiguousAcceleratorError, CatalogError, UnknownAcceleratorError
from hardware_db._generic import generic_device
from hardware_db._loader import builtin_entries, expand_paths, load_file, parse_entry
from hardware_db._schema import Accelerator
from hardware_db.names import did_you_mean, normalize_name

ENV_VAR = "FITPLAN_HARDWARE"
_MAX_LISTED = 8  # candidates named in an "ambiguous" message


class Catalog:
    """Accelerators indexed by normalised canonical name and alias."""

    def __init__(self) -> None:
        self._entries: dict[str, Accelerator] = {}  # normalised canonical name -> entry
        self._owner: dict[str, str] = {}  # normalised name or alias -> normalised canonical name

    def copy(self) -> Catalog:
        other = Catalog()
        other._entries, other._owner = dict(self._entries), dict(self._owner)
        return other

    def entries(self) -> builtins.list[Accelerator]:
        return builtins.list(self._entries.values())

    def add(self, entry: Accelerator, *, origin: str, replace: bool) -> None:
        """Add ``entry``; with ``replace`` it supersedes the entry its name already resolves to.

        The superseded entry's name and aliases then resolve to ``entry``, so references to the
        built-in spelling keep working after an override.
        """
        name_key = normalize_name(entry.name)
        if not name_key:
            raise CatalogError(f"{origin}: name {entry.name!r} has no letters or digits")
        replaced = self._owner.get(name_key)
        if replaced is not None and not replace:
            raise CatalogError(f"{origin}: name {entry.name!r} is already used by "
                               f"{self._entries[replaced].name!r}")
        alias_keys = {normalize_name(alias): alias for alias in entry.aliases}
        alias_keys = {key: alias for key, alias in alias_keys.items() if key not in (name_key, "")}
        # The name without its vendor ("A100 80GB SXM" for "NVIDIA A100 80GB SXM") is an implicit alias
        # unless another entry already owns that spelling.
        vendor_key = normalize_name(entry.vendor)
        short_key = name_key[len(vendor_key):] if vendor_key and name_key.startswith(vendor_key) else ""
        if short_key and short_key not in alias_keys and self._owner.get(short_key) in (None, replaced):
            alias_keys[short_key] = entry.name[len(entry.vendor):].strip()
        for key, alias in alias_keys.items():
            owner = self._owner.get(key)
            if owner is not None and owner != replaced:
                raise CatalogError(f"{origin}: alias {alias!r} of {entry.name!r} already names "
                                   f"{self._entries[owner].name!r}")
        # The replaced entry's spellings keep working and now lead to the new entry.
        inherited = [key for key, owner in self._owner.items() if owner == replaced] if replaced else []
        if replaced is not None:
            del self._entries[replaced]
        self._entries[name_key] = entry
        for key in (*inherited, name_key, *alias_keys):
            self._owner[key] = name_key

    def find(self, query: str) -> Accelerator | None:
        """The entry whose name or alias equals ``query`` (also without a leading vendor name)."""
        for key in self._query_keys(query):
            if key in self._owner:
                return self._entries[self._owner[key]]
        return None

    def miss_error(self, query: str) -> CatalogError:
        """The error for a query :meth:`find` did not resolve: ambiguous family or unknown name."""
        owners: set[str] = set()
        for key in self._query_keys(query):
            owners |= {owner for alias, owner in self._owner.items() if key and alias.startswith(key)}
        if len(owners) >= 2:
            matches = sorted((self._entries[o] for o in owners), key=lambda e: (e.memory_gb, e.name))
            listed = ", ".join(repr(e.name) for e in matches[:_MAX_LISTED])
            more = f" and {len(matches) - _MAX_LISTED} more" if len(matches) > _MAX_LISTED else ""
            return AmbiguousAcceleratorError(
                f"{query!r} matches {len(matches)} accelerators: {listed}{more}. "
                "Use the full name of one of them (memory size and form factor change fit and speed)."
            )
        return UnknownAcceleratorError(
            f"unknown accelerator {query!r}.{did_you_mean(query, self.names())} "
            "See `fitplan hardware list` for the catalog, or give a capacity such as '24GB'."
        )

    def names(self) -> builtins.list[str]:
        """Every canonical name and alias, sorted."""
        return sorted({name for e in self._entries.values() for name in (e.name, *e.aliases)})

    def vendors(self) -> builtins.list[str]:
        return sorted({e.vendor for e in self._entries.values()})

    def _query_keys(self, query: str) -> builtins.list[str]:
        key = normalize_name(query)
        keys = [key]
        for vendor in self.vendors():
            prefix = normalize_name(vendor)
            if key.startswith(prefix) and len(key) > len(prefix):
                keys.append(key[len(prefix):])
        return keys


# --- the process catalog -------------------------------------------------------------------------

_current: Catalog | None = None


def _builtin_catalog() -> Catalog:
    catalog = Catalog()
    for entry in builtin_entries():
        catalog.add(entry, origin="built-in catalog", replace=False)
    return catalog


def _catalog() -> Catalog:
    """The process catalog: built-ins, then the files named by ``FITPLAN_HARDWARE``."""
    global _current
    if _current is None:
        catalog = _builtin_catalog()
        env_paths = _env_paths()
        if env_paths:
            try:
                _add_files(catalog, env_paths)
            except CatalogError as error:
                raise CatalogError(f"{ENV_VAR}: {error}") from None
        _current = catalog
    return _current


def _env_paths() -> builtins.list[str]:
    return [part for part in os.environ.get(ENV_VAR, "").split(os.pathsep) if part.strip()]


def _add_files(catalog: Catalog, paths: Iterable[str | Path]) -> builtins.list[Accelerator]:
    added = []
    for path in expand_paths(paths):
        entries = load_file(path)
        seen: dict[str, str] = {}
        for index, entry in enumerate(entries, start=1):
            key = normalize_name(entry.name)
            if key in seen:
                raise CatalogError(f"{path}: accelerator #{index} ({entry.name!r}) repeats the name "
                                   f"{seen[key]!r} in the same file")
            seen[key] = entry.name
            catalog.add(entry, origin=f"{path}: accelerator #{index} ({entry.name!r})", replace=True)
            added.append(entry)
    return added


def load_user_files(paths: Iterable[str | Path]) -> builtins.list[Accelerator]:
    """Load extra catalog TOML files (or directories of ``*.toml``) into the process catalog.

    Entries replace catalog entries of the same name. All files are validated before any entry is
    applied, so a bad file leaves the catalog unchanged. Returns the entries added.
    """
    global _current
    if isinstance(paths, (str, Path)):
        paths = [paths]
    updated = _catalog().copy()
    added = _add_files(updated, paths)
    _current = updated
    return added


def register(entry: Accelerator | Mapping[str, Any]) -> Accelerator:
    """Add ``entry`` (an :class:`Accelerator` or a dict of its fields) to the process catalog.

    An entry whose name equals an existing name or alias replaces that entry. Returns the entry.
    """
    if isinstance(entry, Mapping):
        entry = parse_entry(entry, f"register({entry.get('name', '<no name>')!r})")
    elif not isinstance(entry, Accelerator):
        raise TypeError(f"register() takes an Accelerator or a dict, not {type(entry).__name__}")
    _catalog().add(entry, origin=f"register({entry.name!r})", replace=True)
    return entry


def reset() -> None:
    """Forget registered and user-file entries; the next lookup reloads built-ins and ``FITPLAN_HARDWARE``."""
    global _current
    _current = None


def get(name: str | Accelerator) -> Accelerator:
    """Resolve a canonical name, alias, spelling variant or capacity string ("16GB") to an accelerator.

    Raises :class:`UnknownAcceleratorError` (with the closest names) or
    :class:`AmbiguousAcceleratorError` (with the candidates). An :class:`Accelerator` is returned as is.
    """
    if isinstance(name, Accelerator):
        return name
    if not isinstance(name, str):
        raise TypeError(f"accelerator name must be a string, not {type(name).__name__}")
    if not normalize_name(name):
        raise UnknownAcceleratorError("empty accelerator name; see `fitplan hardware list`")
    if _current is None and not _env_paths():
        # Only built-in entries could match, and none is named or aliased like a capacity (a test checks
        # every spelling), so "16GB" needs no catalog: skip parsing its files (~15 ms of `fitplan fits`).
        entry = generic_device(name)
        if entry is not None:
            return entry
    catalog = _catalog()
    entry = catalog.find(name)
    if entry is None:
        entry = generic_device(name)
    if entry is None:
        raise catalog.miss_error(name)
    return entry


def all_names() -> builtins.list[str]:
    """Every canonical name and alias in the process catalog (for suggestions and completion)."""
    return _catalog().names()


def vendors() -> builtins.list[str]:
    """The vendors present in the process catalog, e.g. ['AMD', 'Apple', 'Google', 'Intel', 'NVIDIA']."""
    return _catalog().vendors()


def list(  # noqa: A001 - the public name is hardware_db.list by design
    vendor: str | None = None,
    min_memory_gb: float | None = None,
    max_memory_gb: float | None = None,
) -> builtins.list[Accelerator]:
    """Catalog entries, optionally filtered, sorted by vendor then marketed memory (then name).

    ``vendor`` is matched case-insensitively ("nvidia"); an unknown vendor raises with suggestions.
    Memory bounds are inclusive and compare the marketed ``memory_gb``.
    """
    catalog = _catalog()
    entries = catalog.entries()
    if vendor is not None:
        by_key = {normalize_name(v): v for v in catalog.vendors()}
        wanted = by_key.get(normalize_name(vendor))
        if wanted is None:
            raise CatalogError(f"unknown vendor {vendor!r}; known vendors: {', '.join(catalog.vendors())}."
                               + did_you_mean(vendor, catalog.vendors()))
        entries = [e for e in entries if e.vendor == wanted]
    for label, bound in (("min_memory_gb", min_memory_gb), ("max_memory_gb", max_memory_gb)):
        if bound is not None and (not math.isfinite(bound) or bound < 0):
            raise CatalogError(f"{label} must be a finite number >= 0, got {bound}")
    if min_memory_gb is not None and max_memory_gb is not None and min_memory_gb > max_memory_gb:
        raise CatalogError(f"min_memory_gb ({min_memory_gb}) is larger than max_memory_gb ({max_memory_gb})")
    if min_memory_gb is not None:
        entries = [e for e in entries if e.memory_gb >= min_memory_gb]
    if max_memory_gb is not None:
        entries = [e for e in entries if e.memory_gb <= max_memory_gb]
    return sorted(entries, key=lambda e: (e.vendor.lower(), e.memory_gb, e.name))
