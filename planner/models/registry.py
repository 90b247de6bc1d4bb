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

from hardware_db.names import did_you_mean, normalize_name
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
    config_fidelity: str = "verbatim"
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
                config_fidelity=raw.get("config_fidelity", "verbatim"),
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


def unknown_model_error(name: str) -> UnknownModelError:
    """The error for a name that is neither a registry model nor a path, with close matches."""
    labels = [label for e in registry_entries() for label in (e.name, *e.aliases)]
    return UnknownModelError(
        f"unknown model {name!r}.{did_you_mean(name, labels)} "
        "See `fitplan models list`, or pass a local directory / config.json path.")
