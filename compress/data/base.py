"""Task data: tensors, labels, data sources, a seeded stratified split and batch iteration.

A data source is one module in ``compress/data/`` that registers a loader and its config class
with ``register_source``. The YAML key ``data: {source: <name>, ...}`` picks the source; its
config class (a ``DataConfig`` subclass) types the other keys. The loader turns the config and a
``DataEnv`` (where relative paths start, where to cache, which tokenizer the teacher uses) into a
``TaskData``. The split is made once per run (seeded, stratified), stored in the run directory as
index lists with their hash, and reused by every stage, so the teacher and every student see
exactly the same examples.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from compress._utils.io import atomic_torch_save, atomic_write_json, read_json
from compress._utils.registry import Registry
from compress.errors import DataError

if TYPE_CHECKING:
    from compress.config.schema import DataConfig

SOURCES: Registry[DataSource] = Registry("data source")
"""Every data source, by its YAML name (``data.source``)."""

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
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: torch.device | str | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` batches of ``split``.

        Shuffling depends only on ``seed`` (callers pass ``seed + epoch``), so an
        epoch replays identically after a resume. With a CUDA ``device`` the whole
        data set is copied there once and batches are gathered on the device, so
        loading never waits on the host.
        """
        idx = self.splits[split]
        if shuffle:
            rng = np.random.default_rng(seed)
            idx = idx[rng.permutation(len(idx))]
        inputs, labels = self.inputs, self.labels
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if dev.type != "cpu":
            inputs, labels = self._on_device(dev)
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=dev)
        for start in range(0, len(idx_t), batch_size):
            sel = idx_t[start : start + batch_size]
            yield inputs[sel], labels[sel]

    def _on_device(self, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self.__dict__.setdefault("_device_copy", {})
        key = str(dev)
        if key not in cache:
            cache.clear()
            cache[key] = (self.inputs.to(dev), self.labels.to(dev))
        return cache[key]

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


# ------------------------------------------------------------------------------- data sources


class DataSourceError(DataError):
    """A data source's input is missing or malformed (exit 2).

    The message names the data file (and line, where there is one), what was found, what was
    expected and the fix. ``key`` is the ``data:`` key the problem belongs to (``root``, ``path``,
    ``tokenizer``...), so the runner and ``compress validate`` can prefix the pipeline file's line.

    Args:
        detail: The message without any location in the pipeline file.
        key: The key under ``data:`` that the problem concerns; ``None``: ``data`` itself.

    Example:
        >>> str(DataSourceError("/x: not found", key="root"))
        'data.root: /x: not found'
    """

    def __init__(self, detail: str, *, key: str | None = None) -> None:
        self.detail = detail
        self.key = key
        super().__init__(f"data.{key}: {detail}" if key else f"data: {detail}")

    @property
    def yaml_path(self) -> tuple[str, ...]:
        """The YAML path of the key the problem concerns, e.g. ``("data", "root")``."""
        return ("data", self.key) if self.key else ("data",)


@dataclass
class DataEnv:
    """What a loader needs besides its config: where paths start, where to cache, the tokenizer.

    Attributes:
        base_dir: Folder that relative paths in ``data:`` start from (the pipeline YAML's folder).
        cache_dir: Folder for derived data (tokenised tensors), ``<run_dir>/data/cache``;
            ``None``: no cache.
        tokenizer_path: The teacher's Hugging Face folder when the teacher is an ``hf`` model
            loaded from a folder (used by ``tokenizer: teacher``); else ``None``.
        hold_cache_writes: Keep cache files in memory until ``flush_cache()`` instead of writing
            them at once. The runner loads data before it creates the run directory (a bad
            teacher must leave nothing behind), and writes the cache once the directory is locked.
    """

    base_dir: Path
    cache_dir: Path | None = None
    tokenizer_path: Path | None = None
    hold_cache_writes: bool = False
    _held: list[tuple[Path, dict[str, Any]]] = field(default_factory=list, init=False, repr=False)

    def save_cache(self, name: str, payload: dict[str, Any]) -> None:
        """Store ``payload`` (tensors, numbers, strings) as ``cache_dir/name``, atomically.

        Does nothing when ``cache_dir`` is ``None``; holds the write while ``hold_cache_writes``.
        """
        if self.cache_dir is None:
            return
        path = self.cache_dir / name
        if self.hold_cache_writes:
            self._held.append((path, payload))
        else:
            atomic_torch_save(payload, path)

    def flush_cache(self) -> None:
        """Write the cache files held back by ``hold_cache_writes``."""
        while self._held:
            path, payload = self._held.pop(0)
            atomic_torch_save(payload, path)


Loader = Callable[[Any, DataEnv], TaskData]
Checker = Callable[[Any, DataEnv], None]


@dataclass(frozen=True)
class DataSource:
    """A registered data source: its YAML name, config class, loader and pre-flight check.

    Calling it loads the data: ``SOURCES.get("digits")()`` with the default config, or
    ``source(cfg, env)``. The loader's result is checked (shapes, label range) and cut to
    ``cfg.subset`` examples (a seeded stratified subset) when that is set.

    Attributes:
        name: The ``data.source`` value.
        config_class: The source's ``DataConfig`` subclass.
        load: ``load(cfg, env) -> TaskData``.
        check: ``check(cfg, env)``: cheap checks ``compress validate`` runs (files exist, headers);
            raises ``DataSourceError``. ``None``: nothing to check before loading.
        description: One line for ``compress list sources``.
    """

    name: str
    config_class: type[DataConfig]
    load: Loader
    check: Checker | None = None
    description: str = ""

    def __call__(self, cfg: DataConfig | None = None, env: DataEnv | None = None) -> TaskData:
        """Load the data set.

        Args:
            cfg: The source's config; default: every field at its default.
            env: Paths and cache; default: relative paths from the working directory, no cache.

        Returns:
            The data, at most ``cfg.subset`` examples, without splits.

        Raises:
            DataSourceError: A data file is missing or malformed, or the loader returned data
                that is not a classification set.
        """
        cfg = self.config_class() if cfg is None else cfg
        if not isinstance(cfg, self.config_class):
            raise TypeError(
                f"data source '{self.name}' takes a {self.config_class.__name__}, got {type(cfg).__name__}"
            )
        env = DataEnv(base_dir=Path.cwd()) if env is None else env
        with _unreadable_files_are_bad_input():
            data = self.load(cfg, env)
        check_task_data(data, what=f"data source '{self.name}'")
        if cfg.subset is not None and cfg.subset < len(data.labels):
            data = take_examples(data, stratified_subset(data.labels.numpy(), cfg.subset))
        return data

    def preflight(self, cfg: DataConfig, env: DataEnv) -> None:
        """Run the source's cheap checks (``compress validate``); loads nothing big."""
        if self.check is not None:
            with _unreadable_files_are_bad_input():
                self.check(cfg, env)


@contextlib.contextmanager
def _unreadable_files_are_bad_input() -> Iterator[None]:
    """A data file the loader cannot open (permissions, a folder where a file belongs) is bad input.

    Other ``OSError``s (a full disk, an I/O error) stay what they are: faults, not the user's input.
    """
    try:
        yield
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError) as e:
        raise DataSourceError(
            f"{e.filename or 'a data file'}: cannot read it ({e.strerror or e}); "
            "fix the path or its permissions"
        ) from None


def register_source(
    name: str, config_class: type[DataConfig], *, check: Checker | None = None
) -> Callable[[Loader], Loader]:
    """Decorator registering ``load(cfg, env) -> TaskData`` as data source ``name``.

    Args:
        name: The ``data.source`` value; ``config_class.source`` must default to it.
        config_class: The source's config (a ``DataConfig`` subclass with
            ``source: Literal[name] = name``).
        check: Optional cheap pre-flight check run by ``compress validate``.

    Returns:
        The decorator; it returns the loader unchanged.

    Raises:
        ValueError: ``name`` is registered twice, or the config class's ``source`` default differs.

    Example:
        >>> @register_source("my-data", MyDataConfig)  # doctest: +SKIP
        ... def load_my_data(cfg: MyDataConfig, env: DataEnv) -> TaskData: ...
    """
    default = config_class.model_fields["source"].default
    if default != name:
        raise ValueError(
            f"{config_class.__name__}.source defaults to {default!r}, not the source name {name!r}"
        )

    def deco(fn: Loader) -> Loader:
        doc = (fn.__doc__ or "").strip().splitlines()
        SOURCES.register(name)(
            DataSource(
                name=name, config_class=config_class, load=fn, check=check, description=doc[0] if doc else ""
            )
        )
        return fn

    return deco


SUBSET_SEED = 0
"""Seed of ``data.subset``. Fixed, not the pipeline seed: runs with different seeds see the same
examples (and share a data cache); only their split differs."""


def stratified_subset(labels: np.ndarray, n: int, *, seed: int = SUBSET_SEED) -> np.ndarray:
    """Sorted indices of ``n`` examples drawn per class in proportion to the class sizes.

    Each class keeps ``floor(n * share)`` examples plus one more for the classes with the largest
    remainders, and at least one example when ``n`` is at least the number of classes.

    Args:
        labels: Class of every example.
        n: Examples to keep; ``n >= len(labels)`` keeps everything.
        seed: Which examples of each class are kept.

    Returns:
        Sorted int64 indices into ``labels``.

    Example:
        >>> stratified_subset(np.array([0, 0, 0, 0, 1, 1]), 3).tolist()
        [0, 2, 5]
    """
    total = len(labels)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n / total)
    take = np.floor(quota).astype(np.int64)
    if n >= len(classes):
        take = np.maximum(take, 1)
    remainder = quota - take
    # hand out (or take back) the difference by remainder, largest first (stable: ties by class)
    while take.sum() < n:
        room = np.flatnonzero(take < counts)
        j = room[np.argmax(remainder[room])]
        take[j] += 1
        remainder[j] = -np.inf
    while take.sum() > n:
        spare = np.flatnonzero(take > 1)
        j = spare[np.argmin(remainder[spare])]
        take[j] -= 1
        remainder[j] = np.inf
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for c, k in zip(classes, take, strict=True):
        idx = np.flatnonzero(labels == c)
        out.append(idx[np.sort(rng.permutation(len(idx))[:k])])
    return np.sort(np.concatenate(out)).astype(np.int64)


def subset_note(kept: int, total: int) -> dict[str, int]:
    """The ``preprocess["subset"]`` record: examples kept, out of how many, and the seed."""
    return {"examples": int(kept), "of": int(total), "seed": SUBSET_SEED}


def take_examples(data: TaskData, index: np.ndarray) -> TaskData:
    """A new ``TaskData`` holding the examples at ``index`` (no splits; ``preprocess`` records the subset)."""
    sel = torch.as_tensor(index, dtype=torch.long)
    pre = dict(data.preprocess)
    pre["subset"] = subset_note(len(index), len(data.labels))
    return TaskData(
        name=data.name,
        inputs=data.inputs[sel],
        labels=data.labels[sel],
        num_classes=data.num_classes,
        preprocess=pre,
    )


def check_task_data(data: Any, *, what: str) -> None:
    """Check that ``data`` is a classification set: N inputs, N integer labels in [0, num_classes).

    Raises:
        DataSourceError: The first property that does not hold, with the values found.
    """
    if not isinstance(data, TaskData):
        raise DataSourceError(f"{what} returned {type(data).__name__}, expected a TaskData")
    x, y = data.inputs, data.labels
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise DataSourceError(
            f"{what}: inputs and labels must be torch tensors, got {type(x).__name__}, {type(y).__name__}"
        )
    if y.ndim != 1 or y.dtype != torch.long:
        raise DataSourceError(
            f"{what}: labels must be a 1-D int64 tensor, got shape {tuple(y.shape)} {y.dtype}"
        )
    if x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise DataSourceError(
            f"{what}: inputs of shape {tuple(x.shape)} do not match {y.shape[0]} labels "
            "(inputs need one row per example and at least one feature axis)"
        )
    if len(y) == 0:
        raise DataSourceError(f"{what}: no examples")
    if data.num_classes < 2:
        raise DataSourceError(f"{what}: {data.num_classes} class(es); a classification task needs at least 2")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= data.num_classes:
        raise DataSourceError(f"{what}: labels span {lo}..{hi}, expected 0..{data.num_classes - 1}")
