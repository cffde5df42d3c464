"""Task data: tensors, labels, a seeded stratified split and batch iteration.

A data source (registered in ``SOURCES``) turns its config into a ``TaskData``.
The split is made once per run (seeded, stratified), stored in the run
directory as index lists with their hash, and reused by every stage, so the
teacher and every student see exactly the same examples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress._utils.io import atomic_write_json, read_json
from compress._utils.registry import Registry

SOURCES: Registry[Callable[..., TaskData]] = Registry("data source")

SPLITS = ("train", "val", "test")


@dataclass
class TaskData:
    """A classification data set held in memory.

    Attributes:
        name: Source name.
        inputs: Model inputs, first axis = examples (already normalised).
        labels: Integer class labels, shape (N,).
        num_classes: Number of classes.
        preprocess: How raw inputs become ``inputs`` (for preprocess.json / deployers).
        splits: Index arrays for ``train``, ``val`` and ``test``.
    """

    name: str
    inputs: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    preprocess: dict[str, Any]
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.inputs.shape[1:])

    def split_size(self, split: str) -> int:
        """Number of examples in ``split``."""
        return len(self.splits[split])

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` batches of ``split``.

        Shuffling depends only on ``seed`` (callers pass ``seed + epoch``), so an
        epoch replays identically after a resume.
        """
        idx = self.splits[split]
        if shuffle:
            rng = np.random.default_rng(seed)
            idx = idx[rng.permutation(len(idx))]
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        for start in range(0, len(idx_t), batch_size):
            sel = idx_t[start : start + batch_size]
            yield self.inputs[sel], self.labels[sel]

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """All inputs and labels of ``split``."""
        sel = torch.as_tensor(self.splits[split], dtype=torch.long)
        return self.inputs[sel], self.labels[sel]


def stratified_split(
    labels: np.ndarray, *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test split; each split's indices are sorted."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        out["test"].extend(idx[:n_test].tolist())
        out["val"].extend(idx[n_test : n_test + n_val].tolist())
        out["train"].extend(idx[n_test + n_val :].tolist())
    return {s: np.array(sorted(v), dtype=np.int64) for s, v in out.items()}


def splits_hash(splits: dict[str, np.ndarray]) -> str:
    """SHA-256 over the split index lists."""
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(s.encode())
        h.update(np.ascontiguousarray(splits[s], dtype=np.int64).tobytes())
    return h.hexdigest()


def load_or_make_splits(
    data: TaskData, path: Path, *, val_fraction: float, test_fraction: float, seed: int
) -> str:
    """Attach splits to ``data``: read ``path`` if it matches, else make and store them.

    Returns:
        The splits' hash.
    """
    labels = data.labels.numpy()
    meta = {"n": int(len(labels)), "val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    if path.is_file():
        stored = read_json(path)
        if stored.get("meta") == meta:
            splits = {s: np.asarray(stored[s], dtype=np.int64) for s in SPLITS}
            if splits_hash(splits) == stored.get("sha256"):
                data.splits = splits
                return stored["sha256"]
    splits = stratified_split(labels, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    digest = splits_hash(splits)
    atomic_write_json(path, {"meta": meta, "sha256": digest, **{s: splits[s].tolist() for s in SPLITS}})
    data.splits = splits
    return digest


def data_fingerprint(data: TaskData) -> str:
    """SHA-256 of the inputs and labels (cache key for everything downstream)."""
    h = hashlib.sha256()
    h.update(json.dumps([data.name, list(data.inputs.shape), data.num_classes]).encode())
    h.update(data.inputs.contiguous().numpy().tobytes())
    h.update(data.labels.numpy().tobytes())
    return h.hexdigest()
