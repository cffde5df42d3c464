"""Text sources' shared machinery: the teacher's tokenizer, one batch encoding, a cache in the run dir.

A text source parses its files into texts and labels; ``text_task`` tokenises them once with a
Hugging Face fast tokenizer (``padding="max_length"``, truncation) into a (N, max_length) int64
tensor of token ids, and caches the result in ``DataEnv.cache_dir`` under a key made of the
source config, the data files' sizes and modification times, and the tokenizer files' hash. The
next load with the same key reads the cache and neither parses nor tokenises. The model builds
the attention mask from ``ids != pad_token_id`` (recorded in ``preprocess``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from compress._utils.io import sha256_json
from compress.config.schema import DataConfig
from compress.data._common import file_stamp, resolve, short_error
from compress.data.base import DataEnv, DataSourceError, TaskData, stratified_subset, subset_note
from compress.errors import MissingDependency

CACHE_FORMAT = 1
"""Bumped when the cached payload changes shape; old cache files are then ignored."""

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
"""Files that define a Hugging Face tokenizer; their bytes are part of the cache key."""

_SPLIT_KEYS = {"batch_size", "eval_batch_size", "val_fraction", "test_fraction"}
"""Config keys that do not change the tensors (left out of the cache key)."""


class TextDataConfig(DataConfig):
    """Keys every text source has: the tokenizer and the sequence length."""

    input_kind = "token_ids"

    tokenizer: str = Field(
        "teacher",
        description="'teacher' (the teacher's Hugging Face folder) or a tokenizer folder: a path relative "
        "to the YAML or pkg:<package>/<dir>.",
    )
    max_length: int = Field(64, ge=2, le=8192, description="Tokens per example (padded and truncated to it).")


@dataclass
class ParsedText:
    """What a text source's parser returns.

    Attributes:
        texts: One string per example.
        labels: Class index of every example.
        classes: Class names, index = label.
        notes: Extra ``preprocess`` entries (how the text was built, files read).
    """

    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    notes: dict[str, Any] = field(default_factory=dict)


def tokenizer_folder(cfg: TextDataConfig, env: DataEnv) -> Path:
    """The folder ``data.tokenizer`` names, checked to hold tokenizer files.

    Raises:
        DataSourceError: ``teacher`` without a Hugging Face teacher, or a folder without tokenizer files.
    """
    if cfg.tokenizer == "teacher":
        if env.tokenizer_path is None:
            raise DataSourceError(
                "teacher, but the teacher is not a Hugging Face model; set tokenizer: <path or pkg:...>",
                key="tokenizer",
            )
        folder, origin = env.tokenizer_path, " (the teacher's folder, teacher path:)"
    else:
        folder, origin = resolve(cfg.tokenizer, env, key="tokenizer"), ""
    if not folder.is_dir():
        raise DataSourceError(
            f"{folder}{origin}: not found; set tokenizer: to a Hugging Face model or tokenizer folder",
            key="tokenizer",
        )
    if not any((folder / f).is_file() for f in TOKENIZER_FILES[:3]):
        raise DataSourceError(
            f"{folder}{origin}: not a tokenizer folder (none of {', '.join(TOKENIZER_FILES[:3])}); "
            "set tokenizer: to a Hugging Face model or tokenizer folder",
            key="tokenizer",
        )
    return folder


def tokenizer_hash(folder: Path) -> str:
    """SHA-256 over the names and bytes of the tokenizer files in ``folder``."""
    h = hashlib.sha256()
    for name in TOKENIZER_FILES:
        p = folder / name
        if p.is_file():
            h.update(name.encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def load_tokenizer(folder: Path) -> Any:
    """Load the fast tokenizer in ``folder`` offline (nothing is downloaded).

    Raises:
        MissingDependency: transformers is not installed.
        DataSourceError: The folder's tokenizer cannot be loaded or has no padding token.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        from transformers import AutoTokenizer
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "transformers":
            raise MissingDependency(
                "text data sources tokenise with the 'transformers' package, which is not installed; "
                "install it with: pip install 'compress[nlp]'"
            ) from None
        raise
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError... for a broken folder
        raise DataSourceError(
            f"{folder}: cannot load its tokenizer ({short_error(e)}); "
            "set tokenizer: to a Hugging Face model or tokenizer folder",
            key="tokenizer",
        ) from None
    if tok.pad_token_id is None:
        raise DataSourceError(
            f"{folder}: the tokenizer has no padding token, which fixed-length inputs need; "
            "use a tokenizer with a pad token (e.g. the teacher's own)",
            key="tokenizer",
        )
    return tok


def _read_cache(path: Path, key: str) -> TaskData | None:
    """The cached ``TaskData`` at ``path`` if it exists, loads safely and carries ``key``; else None."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("key") != key or obj.get("format") != CACHE_FORMAT:
            return None
        inputs, labels = obj["inputs"].long(), obj["labels"].long()
        pre = json.loads(obj["preprocess"])
        if inputs.ndim != 2 or inputs.shape[0] != labels.shape[0]:
            return None
        return TaskData(
            name=obj["name"],
            inputs=inputs,
            labels=labels,
            num_classes=int(obj["num_classes"]),
            preprocess=pre,
        )
    except Exception:  # a truncated or foreign file is rebuilt, never trusted
        return None


def text_task(
    cfg: TextDataConfig,
    env: DataEnv,
    *,
    files: list[Path],
    parse: Callable[[], ParsedText],
) -> TaskData:
    """Tokenised ``TaskData`` of a text source, from the cache when nothing changed.

    Args:
        cfg: The source config (its ``source``, ``tokenizer``, ``max_length``, ``subset`` and own keys).
        env: Paths, cache folder and the teacher's tokenizer folder.
        files: The data files ``parse`` reads (their sizes and times key the cache).
        parse: Reads the files; called only when the cache misses.

    Returns:
        ``inputs`` (N, max_length) int64 token ids, ``labels``, ``num_classes = len(classes)``; at
        most ``cfg.subset`` examples (the stratified subset is taken before tokenising).

    Raises:
        DataSourceError: From ``parse`` or the tokenizer.
        MissingDependency: transformers is not installed.
    """
    folder = tokenizer_folder(cfg, env)
    tok_sha = tokenizer_hash(folder)
    key = sha256_json(
        {
            "format": CACHE_FORMAT,
            "config": cfg.model_dump(mode="json", exclude=_SPLIT_KEYS),
            "files": [file_stamp(f) for f in files],
            "tokenizer": tok_sha,
        }
    )
    cache_name = f"{cfg.source}-{key[:16]}.pt"
    if env.cache_dir is not None:
        hit = _read_cache(env.cache_dir / cache_name, key)
        if hit is not None:
            return hit
    parsed = parse()
    texts, labels = parsed.texts, np.asarray(parsed.labels, dtype=np.int64)
    notes: dict[str, Any] = {}
    if cfg.subset is not None and cfg.subset < len(labels):
        keep = stratified_subset(labels, cfg.subset)
        notes["subset"] = subset_note(len(keep), len(labels))
        texts, labels = [texts[i] for i in keep], labels[keep]
    tok = load_tokenizer(folder)
    enc = tok(
        texts,
        padding="max_length",
        truncation=True,
        max_length=cfg.max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
        return_tensors="np",
    )
    ids = torch.from_numpy(np.ascontiguousarray(enc["input_ids"], dtype=np.int64))
    pre: dict[str, Any] = {
        "input": "token_ids",
        "layout": "NL",
        "shape": [cfg.max_length],
        "dtype": "int64",
        "max_length": cfg.max_length,
        "padding": "max_length",
        "truncation": True,
        "pad_token_id": int(tok.pad_token_id),
        "attention_mask": "ids != pad_token_id",
        "tokenizer": str(folder),
        "tokenizer_name": f"{type(tok).__name__} ({Path(str(tok.name_or_path)).name})",
        "tokenizer_sha256": tok_sha,
        "vocab_size": len(tok),
        "classes": list(parsed.classes),
        **parsed.notes,
        **notes,
    }
    data = TaskData(
        name=cfg.source,
        inputs=ids,
        labels=torch.from_numpy(labels),
        num_classes=len(parsed.classes),
        preprocess=pre,
    )
    narrow = torch.int32 if len(tok) < 2**31 else torch.int64  # halves the file; ids come back as int64
    env.save_cache(
        cache_name,
        {
            "format": CACHE_FORMAT,
            "key": key,
            "name": data.name,
            "inputs": ids.to(narrow),
            "labels": data.labels.clone(),
            "num_classes": data.num_classes,
            "preprocess": json.dumps(pre),
        },
    )
    return data
