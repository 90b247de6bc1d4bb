"""A search's Optuna study: create it, resume it, and refuse to mix two different searches in one.

The study is the record of a search: its user attributes hold what the search was asked (model,
space, constraints, objectives, fitplan version) and its fingerprint; each trial holds the strategy
JSON and the full prediction (see :mod:`search.objective`). Everything fitplan prints about a search
can be rebuilt from the study alone (``fitplan results``).

Resuming: the same study name with the same fingerprint continues where it stopped (completed trials
are kept; Optuna commits each trial as it finishes, so a process killed with SIGKILL loses at most the
trials that were running). A name that exists with another model, space, constraints or objectives is
refused with what differs and how to resume or rename. Several processes (several machines on
PostgreSQL) may open the same study at once: the first creates it and records its fingerprint, the
others wait for that record and check it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from planner.errors import InvalidRequestError

if TYPE_CHECKING:
    import optuna

FINGERPRINT_KEY = "fitplan_fingerprint"
REQUEST_KEY = "fitplan_request"
# A model read from a local directory or config.json: {"path", "name", "fingerprint", "config"} (the request
# records only the model's name, which does not resolve offline; see study_model).
MODEL_SOURCE_KEY = "fitplan_model_source"
WAIT_FOR_CREATOR_S = 30.0


class StudyMismatchError(InvalidRequestError):
    """The study name exists with a different search request."""


def fingerprint(request: dict[str, Any]) -> str:
    """Stable hash of a search request (model, space, constraints, objectives)."""
    text = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_study_name(request: dict[str, Any]) -> str:
    """``fitplan-<model>-<fingerprint>``: re-running the same command resumes the same study."""
    model = str(request.get("model", "model")).replace("/", "-").replace(" ", "-")
    return f"fitplan-{model}-{fingerprint(request)[:8]}"


def open_study(storage: "optuna.storages.BaseStorage", study_name: str, request: dict[str, Any],
               directions: list[str], sampler: "optuna.samplers.BaseSampler") -> tuple["optuna.Study", bool]:
    """Create or resume ``study_name``; returns (study, resumed). Raises StudyMismatchError."""
    import optuna

    wanted = fingerprint(request)
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
        recorded = _wait_for_fingerprint(study)
        if recorded != wanted:
            raise StudyMismatchError(_mismatch_message(study_name, study.user_attrs.get(REQUEST_KEY) or {}, request))
        if [d.name.lower() for d in study.directions] != directions:
            raise StudyMismatchError(f"study {study_name!r} optimises other directions; use another --study name.")
        return study, True
    study.set_user_attr(REQUEST_KEY, json.loads(json.dumps(request, default=str)))
    study.set_user_attr(FINGERPRINT_KEY, wanted)
    return study, False


def _wait_for_fingerprint(study: "optuna.Study") -> str | None:
    """The creator records the fingerprint just after creating the study: wait a little for it."""
    deadline = time.monotonic() + WAIT_FOR_CREATOR_S
    while True:
        attrs = study._storage.get_study_user_attrs(study._study_id)  # noqa: SLF001 - fresh read, no cache
        if FINGERPRINT_KEY in attrs:
            return attrs[FINGERPRINT_KEY]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _mismatch_message(name: str, recorded: dict[str, Any], request: dict[str, Any]) -> str:
    if not recorded:
        return (f"study {name!r} exists but was not created by fitplan search (no request recorded); "
                "choose another --study name.")
    differing = [key for key in sorted(set(recorded) | set(request))
                 if json.dumps(recorded.get(key), sort_keys=True, default=str)
                 != json.dumps(request.get(key), sort_keys=True, default=str) and key != "fitplan_version"]
    what = ", ".join(differing) or "the request"
    return (f"study {name!r} already exists with a different {what}; to resume it, repeat its original "
            f"command (model {recorded.get('model')!r}), or give a new --study name to start another search.")


def load_existing(storage: "optuna.storages.BaseStorage", study_name: str) -> "optuna.Study":
    """Load a study for reading (``fitplan results``/``report``); a clear error lists the names there."""
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        from hardware_db.names import did_you_mean

        hint = did_you_mean(study_name, names) if names else ""
        listing = f" Studies there: {', '.join(names[:10])}." if names else " The storage has no studies."
        raise InvalidRequestError(f"no study named {study_name!r} in this storage.{hint}{listing}") from None


def _local_path(spec: Any) -> Path | None:
    """The directory (or JSON file) a spec was read from; None for a registry, hub or dict model."""
    source = str(getattr(spec, "source", "") or "")
    if not source or source in ("registry", "dict") or source.startswith(("hub:", "hub-cache:")):
        return None
    path = Path(source).expanduser().resolve()
    return path.parent if path.name == "config.json" else path


def record_model_source(study: "optuna.Study", spec: Any) -> None:
    """Record where a local model came from (its path, fingerprint and config.json) in the study, so
    ``fitplan report`` rebuilds the search offline (:func:`study_model`). A registry or hub model records
    nothing: its name resolves."""
    from planner.accuracy.profile import model_fingerprint

    path = _local_path(spec)
    if path is None:
        return
    study.set_user_attr(MODEL_SOURCE_KEY, json.loads(json.dumps(
        {"path": str(path), "name": spec.name, "fingerprint": model_fingerprint(spec.config), "config": spec.config},
        default=str)))


def study_model(study: "optuna.Study") -> tuple[Any, str | None]:
    """The model of a stored search for its report: (a ModelSpec or a name for ``get_model``, a note or None).

    A local model is read again from its recorded path when that still holds the same model (same
    fingerprint); when the directory moved, was deleted or holds another model now, the spec is rebuilt
    from the config.json recorded in the study and the note says so in one line. A closed loop of a study
    from before this record names only its model directory: gone, that is one InvalidRequestError line.
    Other models: the request's name (registry or hub id)."""
    from planner.accuracy.profile import model_fingerprint
    from planner.models.resolve import get_model
    from planner.models.spec import ModelSpec

    attrs = study.user_attrs
    source = attrs.get(MODEL_SOURCE_KEY)
    if source:
        path = Path(source["path"])
        config_file = path / "config.json" if path.is_dir() else path
        try:
            current = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            current = None
        if isinstance(current, dict) and model_fingerprint(current) == source.get("fingerprint"):
            return get_model(path, name=source.get("name")), None
        why = ("no longer exists (moved or deleted)" if current is None else
               f"now holds another model (fingerprint {model_fingerprint(current) if isinstance(current, dict) else '?'}"
               f", recorded {source.get('fingerprint')})")
        spec = ModelSpec.from_config(source["config"], name=source.get("name"), source=f"study {study.study_name}")
        return spec, (f"the model directory {path} recorded by the search {why}; the report uses the config.json "
                      f"recorded in the study")
    loop_dir = (attrs.get("fitplan_loop") or {}).get("model_dir")
    if loop_dir:
        if Path(loop_dir).is_dir():
            return loop_dir, None
        raise InvalidRequestError(f"the search's model directory {loop_dir} no longer exists (moved?) and study "
                                  f"{study.study_name!r} predates recording the model's config; put the directory "
                                  f"back where it was to write the report.")
    return (attrs.get(REQUEST_KEY) or {}).get("model"), None
