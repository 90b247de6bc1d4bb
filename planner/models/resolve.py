"""Resolve whatever the user typed into a :class:`ModelSpec`.

Accepted, in this order: a ModelSpec, a dict (a parsed config.json), a local directory holding
``config.json``, a path to a ``.json`` config, a registry name or alias, a Hugging Face hub id found in
the local hub cache, and finally a hub id fetched online. Offline (``HF_HUB_OFFLINE=1`` or no network)
a hub id fails at once with a message to pass a local path; it never waits for the hub's retries.
"""

from __future__ import annotations

import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

from planner.errors import InvalidConfigError, OfflineError, UnknownModelError
from planner.models import registry
from planner.models.spec import ModelSpec

HUB_TIMEOUT_S = 10.0
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_TRUE = {"1", "true", "yes", "on"}

ModelLike = ModelSpec | dict | str | os.PathLike


def get_model(model: ModelLike, *, name: str | None = None) -> ModelSpec:
    """Return the ModelSpec for ``model`` (see the module docstring for what is accepted)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec.from_config(model, name=name, source="dict")
    if not isinstance(model, (str, os.PathLike)):
        raise UnknownModelError(
            f"a model must be a registry name, a directory, a config.json path, a dict or a ModelSpec; "
            f"got {type(model).__name__}.")
    text = os.fspath(model).strip()
    if not text:
        raise UnknownModelError("the model name is empty. See `fitplan models list`.")
    if len(text) > registry.MAX_NAME_LENGTH or "\x00" in text:
        if text.endswith(".json") or text.startswith((".", "/", "~")):
            raise UnknownModelError(f"cannot read {text[:40] + '...'!r}: a path of {len(text):,} characters is "
                                    "longer than any file system allows.")
        raise registry.unknown_model_error(text)
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            return _from_file(path / "config.json", name, missing_hint=f"directory {text!r} has no config.json")
        if path.is_file():
            return _from_file(path, name)
    except OSError as error:  # a name the OS refuses as a path (too long a component, ...): not a path
        if text.endswith(".json") or text.startswith((".", "/", "~")):
            raise UnknownModelError(f"cannot read {text!r} ({error.strerror or error}).") from None
    entry = registry.find_entry(text)
    if entry is not None:
        return registry_spec(entry.name)
    if text.endswith(".json") or text.startswith((".", "/", "~")):
        raise UnknownModelError(f"no such file or directory: {text!r}.")
    if _HUB_ID.match(text):
        cached = _hub_cache_config(text)
        if cached is not None:
            return _from_file(cached, name or text, source=f"hub-cache:{text}")
    match = registry.match_variant(text)
    if match is not None:
        return _variant_spec(match)
    if _HUB_ID.match(text):
        if _offline():
            raise OfflineError(f"unknown model {text!r}: not in the built-in registry, and HF_HUB_OFFLINE is set so "
                               f"the hub is not asked.{registry.suggestions(text)} Download its config.json and pass "
                               f"the local path, e.g. `fitplan estimate ./{text.split('/')[-1]}/config.json`.")
        return ModelSpec.from_config(_fetch_hub_config(text), name=name or text, source=f"hub:{text}")
    raise registry.unknown_model_error(text)


def _variant_spec(match: registry.VariantMatch) -> ModelSpec:
    """The registry spec, with the note saying why and the format the repo name implies."""
    spec = registry_spec(match.entry.name)
    update: dict[str, Any] = {"assumptions": (*spec.assumptions, match.note)}
    if match.implied_format is not None:
        from planner.formats import get_format

        fmt = get_format(match.implied_format)
        update["quantization_config"] = {"quant_method": "fitplan-implied", "format": fmt.name,
                                         "implied_by": "the repo name"}
    return spec.model_copy(update=update)


@cache
def registry_spec(canonical_name: str) -> ModelSpec:
    """The (cached) spec of a registry model."""
    entry = registry.get_entry(canonical_name)
    return ModelSpec.from_config(entry.config, name=entry.name, source="registry")


def _from_file(path: Path, name: str | None, *, missing_hint: str | None = None,
               source: str | None = None) -> ModelSpec:
    if not path.is_file():
        raise UnknownModelError(f"{missing_hint or f'no such file: {str(path)!r}'}.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidConfigError(f"{path}: not a readable JSON config ({error}).") from None
    if not isinstance(config, dict):
        raise InvalidConfigError(f"{path}: a config.json must hold a JSON object ({{\"model_type\": ...}}), "
                                 f"this one holds a {type(config).__name__}.")
    default_name = path.parent.name if path.name == "config.json" else path.stem
    return ModelSpec.from_config(config, name=name or config.get("_name_or_path") or default_name,
                                 source=source or str(path))


def _hub_cache_dirs() -> list[Path]:
    dirs = []
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            dirs.append(Path(os.environ[variable]))
    home = os.environ.get("HF_HOME")
    dirs.append(Path(home) / "hub" if home else Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _hub_cache_config(repo_id: str) -> Path | None:
    """config.json of ``repo_id`` from the local Hugging Face cache (snapshot of refs/main first)."""
    folder = "models--" + repo_id.replace("/", "--")
    for cache_dir in _hub_cache_dirs():
        repo = cache_dir / folder
        if not repo.is_dir():
            continue
        ref = repo / "refs" / "main"
        if ref.is_file():
            candidate = repo / "snapshots" / ref.read_text().strip() / "config.json"
            if candidate.is_file():
                return candidate
        snapshots = sorted((repo / "snapshots").glob("*/config.json"))
        if snapshots:
            return snapshots[-1]
    return None


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _fetch_hub_config(repo_id: str) -> dict[str, Any]:
    # Imported here: urllib.request (with http.client and email) costs every command ~20 ms at start-up.
    import urllib.error
    import urllib.request

    hint = (f"Download its config.json (or the model) and pass the local path, e.g. "
            f"`fitplan models show ./{repo_id.split('/')[-1]}/config.json`.")
    if _offline():
        raise OfflineError(f"{repo_id!r} is not in the built-in registry and HF_HUB_OFFLINE is set. {hint}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/{repo_id}/resolve/main/config.json")
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=HUB_TIMEOUT_S) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise UnknownModelError(f"{repo_id!r} is gated or private on the hub (HTTP {error.code}); set HF_TOKEN "
                                    f"or pass a local path. {hint}") from None
        if error.code == 404:
            raise UnknownModelError(f"{repo_id!r} is not in the registry and not on the hub (HTTP 404). "
                                    "See `fitplan models list`.") from None
        raise OfflineError(f"the hub answered HTTP {error.code} for {repo_id!r}. {hint}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise OfflineError(f"cannot reach the Hugging Face hub for {repo_id!r} ({reason}). {hint}") from None
    except json.JSONDecodeError as error:
        raise InvalidConfigError(f"{repo_id}: the hub's config.json is not valid JSON ({error}).") from None
