"""``text``: labelled texts from JSONL or CSV files, tokenised with the teacher's tokenizer.

Each record holds a text (``text_field``) and a label (``label_field``). Labels are integers
(class indices) or strings (class names). Without ``classes:``, string labels become the sorted
set of names found, and integer labels ``0..max``; with ``classes:``, that list fixes the names and
their order, and a label outside it is an error. ``preprocess["classes"]`` records the names.

JSONL: one JSON object per line (blank lines skipped). CSV: a header row naming the columns;
a label column of integers only is read as integers (as names when ``classes:`` is given).
Every problem names the file and line.

Example (YAML)::

    data:
      source: text
      path: [train.jsonl, extra.jsonl]
      text_field: sentence
      label_field: topic
      max_length: 128
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from compress.data._common import resolve
from compress.data._text import ParsedText, TextDataConfig, text_task, tokenizer_folder
from compress.data.base import DataEnv, DataSourceError, TaskData, register_source

_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "csv"}
_INT = re.compile(r"^[+-]?\d+$")


class TextFileDataConfig(TextDataConfig):
    """Texts with labels from JSONL or CSV files."""

    source: Literal["text"] = Field(
        "text", description="Registered data source (see `compress list sources`)."
    )
    path: list[str] = Field(
        min_length=1,
        description="JSONL or CSV file(s), relative to the YAML (or pkg:...); one path or a list.",
    )
    format: Literal["auto", "jsonl", "csv"] = Field(
        "auto", description="File format; auto: by extension (.jsonl/.ndjson/.json, .csv/.tsv)."
    )
    text_field: str = Field("text", min_length=1, description="Key (JSONL) or column (CSV) of the text.")
    label_field: str = Field("label", min_length=1, description="Key (JSONL) or column (CSV) of the label.")
    classes: list[str] | None = Field(
        None,
        min_length=2,
        description="Class names in label order; null: the sorted names (or 0..max) found.",
    )
    delimiter: str | None = Field(
        None, min_length=1, max_length=1, description="CSV delimiter; null: ',' (tab for .tsv)."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            dup = sorted({c for c in v if v.count(c) > 1})
            raise ValueError(f"class names must be distinct; repeated: {', '.join(dup)}")
        return v


def _files(cfg: TextFileDataConfig, env: DataEnv) -> list[tuple[Path, str]]:
    """Resolved files with their format; each must exist."""
    out = []
    for p in cfg.path:
        path = resolve(p, env, key="path")
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise DataSourceError(f"{path}: {what}; fix data.path (relative to the YAML)", key="path")
        fmt = cfg.format if cfg.format != "auto" else _FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise DataSourceError(
                f"{path}: cannot tell the format from the extension '{path.suffix}'; "
                "set data.format: jsonl or csv",
                key="path",
            )
        out.append((path, fmt))
    return out


def _jsonl_records(path: Path, cfg: TextFileDataConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataSourceError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); "
                    "write one JSON object per line",
                    key="path",
                ) from None
            if not isinstance(rec, dict):
                raise DataSourceError(
                    f"{path}:{lineno}: got a JSON {type(rec).__name__}; expected an object with "
                    f"'{cfg.text_field}' and '{cfg.label_field}'",
                    key="path",
                )
            yield lineno, rec


def _csv_records(path: Path, cfg: TextFileDataConfig) -> Iterator[tuple[int, dict[str, Any]]]:
    delim = cfg.delimiter or ("\t" if path.suffix.lower() == ".tsv" else ",")
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delim)
        try:
            header = next(reader, None)
            if header is None:
                return
            for col in (cfg.text_field, cfg.label_field):
                if col not in header:
                    raise DataSourceError(
                        f"{path}:1: no column '{col}' in the header (columns: {', '.join(header)}); "
                        f"set data.{'text_field' if col == cfg.text_field else 'label_field'}",
                        key="path",
                    )
            start = reader.line_num + 1
            for row in reader:
                if row:
                    if len(row) != len(header):
                        raise DataSourceError(
                            f"{path}:{start}: {len(row)} fields, the header has {len(header)}; "
                            "quote fields that contain the delimiter",
                            key="path",
                        )
                    yield start, dict(zip(header, row, strict=True))
                start = reader.line_num + 1
        except csv.Error as e:
            raise DataSourceError(f"{path}:{reader.line_num}: malformed CSV ({e})", key="path") from None


def read_records(cfg: TextFileDataConfig, env: DataEnv) -> ParsedText:
    """Read every record of the files named in ``cfg``.

    Returns:
        Texts, labels and class names.

    Raises:
        DataSourceError: A missing file, a malformed line, a missing field, a label of the wrong
            kind or outside ``classes``, or no records at all; each names the file and line.
    """
    texts: list[str] = []
    raw_labels: list[int | str] = []
    where: list[tuple[Path, int]] = []
    kind: type | None = None
    for path, fmt in _files(cfg, env):
        is_csv = fmt == "csv"
        records = _csv_records(path, cfg) if is_csv else _jsonl_records(path, cfg)
        try:
            for lineno, rec in records:
                missing = [k for k in (cfg.text_field, cfg.label_field) if k not in rec]
                if missing:
                    keys = ", ".join(map(str, rec))
                    raise DataSourceError(
                        f"{path}:{lineno}: no '{missing[0]}' in the record (keys: {keys}); "
                        f"set data.{'text_field' if missing[0] == cfg.text_field else 'label_field'} "
                        "or fix the record",
                        key="path",
                    )
                text, label = rec[cfg.text_field], rec[cfg.label_field]
                if not isinstance(text, str):
                    raise DataSourceError(
                        f"{path}:{lineno}: '{cfg.text_field}' is {type(text).__name__} {str(text)[:40]!r}; "
                        "expected a string",
                        key="path",
                    )
                if isinstance(label, bool) or not isinstance(label, (int, str)):
                    raise DataSourceError(
                        f"{path}:{lineno}: label {label!r} ({type(label).__name__}); "
                        "expected an integer class index or a class name (string)",
                        key="path",
                    )
                if isinstance(label, str) and is_csv and _INT.match(label.strip()) and cfg.classes is None:
                    label = int(label)
                if kind is None:
                    kind = type(label)
                elif type(label) is not kind:
                    raise DataSourceError(
                        f"{path}:{lineno}: label {label!r} is of type {type(label).__name__}, earlier labels "
                        f"are {kind.__name__}; use class names or class indices throughout",
                        key="path",
                    )
                texts.append(text)
                raw_labels.append(label)
                where.append((path, lineno))
        except UnicodeDecodeError as e:
            raise DataSourceError(
                f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8", key="path"
            ) from None
    if not texts:
        names = ", ".join(str(p) for p, _ in _files(cfg, env))
        raise DataSourceError(f"{names}: no records; expected at least one labelled text", key="path")
    labels, classes = _label_indices(raw_labels, where, cfg)
    return ParsedText(
        texts=texts,
        labels=labels,
        classes=classes,
        notes={
            "files": [str(p) for p, _ in _files(cfg, env)],
            "text_field": cfg.text_field,
            "label_field": cfg.label_field,
        },
    )


def _label_indices(
    raw: list[int | str], where: list[tuple[Path, int]], cfg: TextFileDataConfig
) -> tuple[np.ndarray, list[str]]:
    """Class indices and class names for the labels as read."""
    if isinstance(raw[0], str):
        classes = list(cfg.classes) if cfg.classes is not None else sorted(set(raw))  # type: ignore[arg-type]
        index = {c: i for i, c in enumerate(classes)}
        out = np.empty(len(raw), dtype=np.int64)
        for j, label in enumerate(raw):
            if label not in index:
                path, lineno = where[j]
                raise DataSourceError(
                    f"{path}:{lineno}: unknown label {label!r}; expected one of data.classes "
                    f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); "
                    "add it there or fix the record",
                    key="path",
                )
            out[j] = index[label]  # type: ignore[index]
        return out, classes
    out = np.asarray(raw, dtype=np.int64)
    n = len(cfg.classes) if cfg.classes is not None else int(out.max()) + 1
    bad = np.flatnonzero((out < 0) | (out >= n))
    if len(bad):
        path, lineno = where[int(bad[0])]
        value = int(out[bad[0]])
        why = "is negative" if value < 0 else f"is outside 0..{n - 1} (the length of data.classes)"
        raise DataSourceError(f"{path}:{lineno}: label {value} {why}; class indices start at 0", key="path")
    classes = list(cfg.classes) if cfg.classes is not None else [str(i) for i in range(n)]
    return out, classes


def check_text(cfg: TextFileDataConfig, env: DataEnv) -> None:
    """The files exist, the tokenizer folder is usable, every record reads (tokenises nothing)."""
    _files(cfg, env)
    tokenizer_folder(cfg, env)
    read_records(cfg, env)


@register_source("text", TextFileDataConfig, check=check_text)
def load_text(cfg: TextFileDataConfig, env: DataEnv) -> TaskData:
    """Labelled texts from JSONL or CSV files (text and label fields named in YAML), tokenised.

    Args:
        cfg: Files, field names, optional class list, tokenizer and ``max_length``.
        env: Where relative paths start, the cache folder, the teacher's tokenizer folder.

    Returns:
        (N, max_length) int64 token ids and labels; from the cache when nothing changed.

    Raises:
        DataSourceError: A bad file or record (naming file and line) or an unusable tokenizer.
    """
    files = [p for p, _ in _files(cfg, env)]
    return text_task(cfg, env, files=files, parse=lambda: read_records(cfg, env))
