"""The user's data for evaluation (``--eval-data``) and calibration/distillation (``--calib-data``).

One reader, :func:`read_texts`, for every evaluator and step. The format follows the path:

- a directory: a dataset saved with ``datasets`` (``Dataset.save_to_disk``), read with
  ``datasets.load_from_disk`` (needs the ``datasets`` package). A ``DatasetDict`` gives its ``test``,
  then ``validation``, then ``train`` split (``split=`` picks one);
- ``.jsonl`` / ``.ndjson``: one JSON object (or string) per line; ``.json``: a list of them;
- ``.csv`` / ``.tsv``: a header row, then one example per row;
- anything else: UTF-8 text. ``unit="line"`` takes each non-empty line as one text (sentences for
  fidelity and accuracy), ``unit="paragraph"`` each block separated by blank lines (documents for
  perplexity and training).

Records (JSON objects, CSV rows, dataset rows) give their text in ``text_field`` (default: the first
of :data:`TEXT_FIELDS` present, else the only text-valued field) and, when ``labels=True``, their
label in ``label_field`` (default: the first of :data:`LABEL_FIELDS`). Every problem (missing or
unreadable file, bad JSON on line N, no such column, no text at all) is one
:class:`~planner.errors.InvalidRequestError` naming the file and what is allowed.

:func:`data_fingerprint` hashes the bytes of the file (or of every file of a dataset directory): the
baseline references of evaluations on user data are cached under it, so an edited file is never
compared with a reference computed on its old content.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from planner.errors import InvalidRequestError

TEXT_FIELDS = ("text", "sentence", "content", "document", "question", "prompt", "input")
LABEL_FIELDS = ("label", "labels", "class", "category", "target")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_DELIMITERS = {".csv": ",", ".tsv": "\t"}
DATASET_SPLITS = ("test", "validation", "train")
Unit = Literal["line", "paragraph"]


@dataclass(frozen=True)
class TextData:
    """Texts (and labels) read from one file or dataset directory."""

    source: str
    format: str  # "text", "jsonl", "json", "csv", "tsv" or "datasets"
    texts: tuple[str, ...]
    labels: tuple[str | int, ...] | None
    fingerprint: str
    text_field: str | None = None
    label_field: str | None = None

    def describe(self) -> str:
        fields = f", text field {self.text_field!r}" if self.text_field else ""
        fields += f", label field {self.label_field!r}" if self.label_field else ""
        return f"{self.source} ({self.format}, {len(self.texts)} texts{fields})"


def data_fingerprint(path: str | os.PathLike) -> str:
    """sha256 (16 hex digits) of a file's bytes, or of the relative names and bytes of every file
    below a directory."""
    source = _existing(path)
    digest = hashlib.sha256()
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    for file in files:
        if source.is_dir():
            digest.update(str(file.relative_to(source)).encode() + b"\0")
        try:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise InvalidRequestError(f"data {str(path)!r} cannot be read: {error.strerror or error}.") from error
    return digest.hexdigest()[:16]


def read_texts(path: str | os.PathLike, *, unit: Unit = "line", labels: bool = False,
               text_field: str | None = None, label_field: str | None = None,
               split: str | None = None) -> TextData:
    """The texts (and labels) of a data file or saved dataset; see the module docstring."""
    source = _existing(path)
    stat = source.stat()
    return _read_cached(str(source.resolve()), stat.st_mtime_ns, stat.st_size, unit, labels, text_field,
                        label_field, split, str(path))


@lru_cache(maxsize=16)
def _read_cached(resolved: str, _mtime: int, _size: int, unit: Unit, labels: bool, text_field: str | None,
                 label_field: str | None, split: str | None, shown: str) -> TextData:
    source = Path(resolved)
    if source.is_dir():
        records, fmt = _dataset_records(source, shown, split), "datasets"
    else:
        suffix = source.suffix.lower()
        text = _read_text(source, shown)
        if suffix in JSONL_SUFFIXES:
            records, fmt = _jsonl_records(text, shown), "jsonl"
        elif suffix == ".json":
            records, fmt = _json_records(text, shown), "json"
        elif suffix in CSV_DELIMITERS:
            records, fmt = _csv_records(text, shown, CSV_DELIMITERS[suffix]), suffix[1:]
        else:
            if labels:
                raise InvalidRequestError(f"data {shown!r} is plain text, which has no labels; accuracy needs a "
                                          f"CSV/TSV, JSONL or dataset with a text and a label column "
                                          f"(e.g. {', '.join(LABEL_FIELDS[:2])}).")
            pieces = [p.strip() for p in (text.split("\n\n") if unit == "paragraph" else text.splitlines())]
            texts = tuple(p for p in pieces if p)
            _require_texts(texts, shown)
            return TextData(source=shown, format="text", texts=texts, labels=None,
                            fingerprint=data_fingerprint(source))
    label_name = _pick_field(records, label_field, LABEL_FIELDS, "label", shown) if labels else None
    field = _pick_field(records, text_field, TEXT_FIELDS, "text", shown, strings_only=True, exclude=label_name)
    texts, label_values = [], []
    for index, record in enumerate(records):
        value = record.get(field) if isinstance(record, dict) else record
        if not isinstance(value, str) or not value.strip():
            continue
        if label_name is not None:
            label = record.get(label_name)
            if label is None or (isinstance(label, str) and not label.strip()):
                raise InvalidRequestError(f"data {shown!r}: record {index + 1} has text but no {label_name!r} "
                                          f"label; every example needs one.")
            label_values.append(label if isinstance(label, int) and not isinstance(label, bool) else str(label))
        texts.append(value.strip())
    _require_texts(tuple(texts), shown)
    return TextData(source=shown, format=fmt, texts=tuple(texts),
                    labels=tuple(label_values) if label_name is not None else None,
                    fingerprint=data_fingerprint(source), text_field=field if records and isinstance(records[0], dict)
                    else None, label_field=label_name)


def _existing(path: str | os.PathLike) -> Path:
    source = Path(path).expanduser()
    if not source.exists():
        raise InvalidRequestError(f"data {str(path)!r} does not exist; pass a text, JSONL, CSV/TSV file or a "
                                  f"directory saved with datasets' save_to_disk.")
    return source


def _read_text(source: Path, shown: str) -> str:
    try:
        return source.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InvalidRequestError(f"data {shown!r} is not UTF-8 text (byte {error.start}); save it as UTF-8.") \
            from error
    except OSError as error:
        raise InvalidRequestError(f"data {shown!r} cannot be read: {error.strerror or error}.") from error


def _require_texts(texts: tuple[str, ...], shown: str) -> None:
    if not texts:
        raise InvalidRequestError(f"data {shown!r} holds no text (empty, or only blank lines / empty fields).")


def _jsonl_records(text: str, shown: str) -> list[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise InvalidRequestError(f"data {shown!r}: line {number} is not valid JSON ({error.msg}); a JSONL "
                                      f"file holds one JSON object or string per line.") from error
    return _check_records(records, shown)


def _json_records(text: str, shown: str) -> list[Any]:
    try:
        payload = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as error:
        raise InvalidRequestError(f"data {shown!r} is not valid JSON (line {error.lineno}: {error.msg}).") from error
    if not isinstance(payload, list):
        raise InvalidRequestError(f"data {shown!r}: a .json file must hold a list of objects or strings "
                                  f"(one per example); use .jsonl for one object per line.")
    return _check_records(payload, shown)


def _csv_records(text: str, shown: str, delimiter: str) -> list[Any]:
    try:
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        records = [dict(row) for row in reader]
    except csv.Error as error:
        raise InvalidRequestError(f"data {shown!r} is not valid CSV: {error}.") from error
    if reader.fieldnames is None:
        raise InvalidRequestError(f"data {shown!r} holds no text (empty file; a CSV/TSV needs a header row).")
    return records


def _dataset_records(source: Path, shown: str, split: str | None) -> list[Any]:
    try:
        import datasets
    except ImportError as error:
        raise InvalidRequestError(f"data {shown!r} is a directory: reading a saved dataset needs the datasets "
                                  f"package (pip install datasets), or export it to JSONL / CSV.") from error
    try:
        loaded = datasets.load_from_disk(str(source))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise InvalidRequestError(f"data {shown!r} is a directory but not a dataset saved with save_to_disk: "
                                  f"{error}.") from error
    if isinstance(loaded, dict):  # a DatasetDict
        names = list(loaded.keys())
        wanted = [split] if split else [s for s in DATASET_SPLITS if s in names] or names[:1]
        if not wanted or wanted[0] not in names:
            raise InvalidRequestError(f"data {shown!r} has no split {split!r}; it has {', '.join(names)}.")
        loaded = loaded[wanted[0]]
    return list(loaded)


def _check_records(records: list[Any], shown: str) -> list[Any]:
    for index, record in enumerate(records):
        if not isinstance(record, (dict, str)):
            raise InvalidRequestError(f"data {shown!r}: example {index + 1} is a {type(record).__name__}; each "
                                      f"example must be a JSON object (with a text field) or a string.")
    return records


def _pick_field(records: list[Any], wanted: str | None, preferred: tuple[str, ...], what: str, shown: str,
                strings_only: bool = False, exclude: str | None = None) -> str | None:
    objects = [r for r in records if isinstance(r, dict)]
    if not objects:
        if wanted is not None or what == "label":
            raise InvalidRequestError(f"data {shown!r} holds plain strings, so it has no {wanted or what!r} field.")
        return None
    fields = list(dict.fromkeys(k for r in objects[:100] for k in r))
    if wanted is not None:
        if wanted not in fields:
            from hardware_db.names import did_you_mean

            raise InvalidRequestError(f"data {shown!r} has no {what} field {wanted!r}.{did_you_mean(wanted, fields)} "
                                      f"Fields: {', '.join(fields)}.")
        return wanted
    for name in preferred:
        if name in fields:
            return name
    if strings_only:
        texts = [k for k in fields if k != exclude and all(isinstance(r.get(k), str) for r in objects[:100] if k in r)]
        if len(texts) == 1:
            return texts[0]
    raise InvalidRequestError(f"data {shown!r}: cannot tell which field holds the {what}; it has "
                              f"{', '.join(fields) or 'no fields'}. Name it one of {', '.join(preferred)}, or pass "
                              f"{what}_field (CLI: --{what}-field).")
