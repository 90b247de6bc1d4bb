"""The built-in model registry: config.json facts of popular models, shipped as data.

Each file in ``planner/data/models/`` holds one family (``{"schema_version": 1, "family": ...,
"models": [...]}``); each entry keeps the config.json facts with their provenance (``source``,
``corroborating_sources``, ``config_fidelity``, ``notes``, ``verified``) and the exact parameter count
transformers reports (``params_total_exact``; null for trust_remote_code families transformers cannot
build, which keep ``params_published``). ``config_fidelity`` says whether the config is a verbatim copy
(``verbatim``, ``verbatim_copy_github``, ``official_page``...) or was rebuilt from a named preset
(``reconstructed``, ``transformers_reference_defaults``). ``transformers_model_type`` names the class the
exact-count test builds when transformers calls the family differently (Kimi-K2 = DeepSeek-V3), and
``meta_count_excludes: "lm_head"`` marks checkpoints whose untied head transformers ties anyway (T5
v1.1, mT5). Adding a model is adding an entry, not code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from hardware_db.names import close_matches, normalize_name
from planner.errors import InvalidConfigError, UnknownModelError

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RegistryEntry:
    """One registry model: its config plus the provenance of the facts."""

    name: str
    aliases: tuple[str, ...]
    family: str
    config: dict[str, Any] = field(repr=False)
    params_total_exact: int | None
    instantiate_as: str
    source: str
    notes: str
    verified: bool
    config_fidelity: str | None = None
    transformers_model_type: str | None = None
    meta_count_excludes: str | None = None


@cache
def registry_entries() -> tuple[RegistryEntry, ...]:
    """Every built-in entry, in file order (families alphabetically)."""
    entries = []
    data_dir = resources.files("planner") / "data" / "models"
    for path in sorted(data_dir.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".json"):
            continue
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise InvalidConfigError(
                f"{path.name}: schema_version {payload.get('schema_version')!r} is not {SCHEMA_VERSION}.")
        for raw in payload["models"]:
            entries.append(RegistryEntry(
                name=raw["name"], aliases=tuple(raw.get("aliases", ())), family=payload["family"],
                config=raw["config"], params_total_exact=raw.get("params_total_exact"),
                instantiate_as=raw.get("instantiate_as", "causal_lm"), source=raw.get("source", ""),
                notes=raw.get("notes", ""), verified=bool(raw.get("verified", False)),
                config_fidelity=raw.get("config_fidelity"),
                transformers_model_type=raw.get("transformers_model_type"),
                meta_count_excludes=raw.get("meta_count_excludes"),
            ))
    return tuple(entries)


def _key(label: str) -> str:
    return normalize_name(label, keep_dots=True)


@cache
def _index() -> dict[str, RegistryEntry]:
    """Normalised name -> entry, for the canonical name, every alias and the part after 'org/'."""
    index: dict[str, RegistryEntry] = {}
    short_names: dict[str, list[RegistryEntry]] = {}
    for entry in registry_entries():
        for label in (entry.name, *entry.aliases):
            key = _key(label)
            if key in index and index[key] is not entry:
                raise InvalidConfigError(f"model registry: {label!r} names both {index[key].name} and {entry.name}.")
            index[key] = entry
            short_names.setdefault(_key(label.split("/")[-1]), []).append(entry)
    for key, entries in short_names.items():
        unique = {e.name: e for e in entries}
        if len(unique) == 1:
            index.setdefault(key, next(iter(unique.values())))
    return index


@cache
def _core_index() -> dict[str, list[RegistryEntry]]:
    """Core of every name and alias (see :mod:`planner.models.variants`) -> entries, in registry order."""
    from planner.models.variants import core_of

    index: dict[str, list[RegistryEntry]] = {}
    for entry in registry_entries():
        for label in (entry.name, *entry.aliases):
            found = index.setdefault(core_of(label), [])
            if entry not in found:
                found.append(entry)
    return index


@dataclass(frozen=True)
class VariantMatch:
    """A hub id read as a registry entry: the entry, why, and the weight format the name implies."""

    entry: RegistryEntry
    note: str
    implied_format: str | None


def match_variant(name: str) -> VariantMatch | None:
    """The registry entry whose architecture ``name`` names with variant/packaging suffixes, or None.

    ``Qwen/Qwen2.5-7B-Instruct-AWQ`` -> Qwen2.5-7B with awq-int4 weights. When several entries share the
    core, they must have the same parameter count (the same architecture); otherwise there is no match.
    """
    from planner.models.variants import parse_variant

    variant = parse_variant(name)
    if not variant.core:
        return None
    entries = _core_index().get(variant.core, [])
    if not entries:
        return None
    totals = {e.params_total_exact for e in entries}
    if len(totals) > 1:
        return None
    entry = entries[0]
    words = "-".join(variant.dropped)
    why = f"same architecture; the name adds {words!r}" if words else "same architecture, other spelling"
    note = f"{name!r} is not a registry name: read as the registry model {entry.name} ({why})"
    if variant.implied_format:
        note += f"; {variant.format_reason}, so its default precision is {variant.implied_format}"
    return VariantMatch(entry=entry, note=note + ".", implied_format=variant.implied_format)


def all_names() -> list[str]:
    """Canonical names of every registry model."""
    return [entry.name for entry in registry_entries()]


def find_entry(name: str) -> RegistryEntry | None:
    """The registry entry for ``name`` (canonical, alias or name without org), or None."""
    return _index().get(_key(name))


def get_entry(name: str) -> RegistryEntry:
    entry = find_entry(name)
    if entry is None:
        raise unknown_model_error(name)
    return entry


def suggestions(name: str) -> str:
    """' Did you mean ...?' over registry names (compared on the core of the name first), or ''."""
    from planner.models.variants import core_of

    if len(name) > MAX_NAME_LENGTH:
        return ""
    labels = [label for e in registry_entries() for label in (e.name, *e.aliases)]
    by_core: dict[str, str] = {}
    for label in labels:
        by_core.setdefault(core_of(label), label)
    matches = [by_core[c] for c in close_matches(core_of(name), by_core)] or close_matches(name, labels)
    return " Did you mean " + ", ".join(repr(m) for m in matches) + "?" if matches else ""


def unknown_model_error(name: str) -> UnknownModelError:
    """The error for a name that is neither a registry model nor a path, with close matches."""
    shown = name if len(name) <= 80 else name[:60] + f"... ({len(name):,} characters)"
    return UnknownModelError(
        f"unknown model {shown!r}: not in the built-in registry.{suggestions(name)} "
        "See `fitplan models list`, or pass a local directory / config.json path.")


MAX_NAME_LENGTH = 300  # longer than any hub id (96 characters per part); longer input is not a name
