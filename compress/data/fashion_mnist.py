"""``fashion-mnist``: Zalando's Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist``.

The 60,000 training and 10,000 test images are pooled (70,000 images, 10 classes, 7,000 each) and
split by the pipeline's own seeded stratified split like every other source. Images become
(N, 1, 28, 28) float32 ``(pixel / 255 - 0.2860) / 0.3530``: fixed constants (the training set's
mean and standard deviation, rounded), so no statistic depends on the split.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header, magic ``0x00000803`` (unsigned bytes,
3 dimensions) for images and ``0x00000801`` for labels, one 32-bit size per dimension, then the
bytes. Every file's magic number, dimensions and length are checked; a truncated or corrupt file
is a ``DataSourceError`` naming it.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from compress.config.schema import DataConfig
from compress.data._common import require_folder, resolve, short_error
from compress.data.base import DataEnv, DataSourceError, TaskData, register_source

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
INSTALL = "apt-get install dataset-fashion-mnist"
MEAN = 0.2860
STD = 0.3530
IMAGE_MAGIC = 0x00000803
LABEL_MAGIC = 0x00000801
SIDE = 28
PARTS = ("train", "t10k")
CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def idx_files(part: str) -> tuple[str, str]:
    """The image and label file names of ``part`` (``train`` or ``t10k``)."""
    return f"{part}-images-idx3-ubyte.gz", f"{part}-labels-idx1-ubyte.gz"


ALL_FILES = [name for part in PARTS for name in idx_files(part)]


class FashionMnistDataConfig(DataConfig):
    """Fashion-MNIST from its IDX gz files (Debian package ``dataset-fashion-mnist``)."""

    input_kind = "image"

    source: Literal["fashion-mnist"] = Field(
        "fashion-mnist", description="Registered data source (see `compress list sources`)."
    )
    root: str = Field(
        DEFAULT_ROOT,
        description="Folder with {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "
        "(relative to the YAML, or pkg:...).",
    )


def _corrupt(path: Path, what: str) -> DataSourceError:
    return DataSourceError(
        f"{path}: {what}; the file is truncated or corrupt: reinstall it "
        f"(`apt-get install --reinstall dataset-fashion-mnist`) or replace it",
        key="root",
    )


def _check_header(path: Path, raw: bytes, magic: int) -> tuple[int, ...]:
    """Check the IDX magic number and return the dimensions."""
    kind = "images" if magic == IMAGE_MAGIC else "labels"
    if len(raw) < 4 or raw[:2] != b"\0\0" or int.from_bytes(raw[:4], "big") != magic:
        got = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else f"{len(raw)} bytes"
        raise _corrupt(
            path, f"IDX magic number {got}, expected 0x{magic:08x} (an IDX {kind} file of unsigned bytes)"
        )
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise _corrupt(path, f"IDX header cut short ({len(raw)} bytes, {ndim} dimensions announced)")
    return struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])


def read_idx(path: Path, *, magic: int) -> np.ndarray:
    """Read one gzipped IDX file of unsigned bytes.

    Args:
        path: The ``.gz`` file.
        magic: ``IMAGE_MAGIC`` (N x 28 x 28) or ``LABEL_MAGIC`` (N).

    Returns:
        uint8 array of the header's shape.

    Raises:
        DataSourceError: Not gzip, truncated, wrong magic number, wrong image size or wrong length.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _corrupt(path, f"cannot decompress it ({short_error(e)})") from None
    shape = _check_header(path, raw, magic)
    want_dims = 3 if magic == IMAGE_MAGIC else 1
    if len(shape) != want_dims or (want_dims == 3 and shape[1:] != (SIDE, SIDE)):
        want = f"(N, {SIDE}, {SIDE})" if want_dims == 3 else "(N,)"
        raise _corrupt(path, f"IDX shape {shape}, expected {want}")
    header = 4 + 4 * len(shape)
    need = header + int(np.prod(shape))
    if len(raw) != need:
        raise _corrupt(
            path, f"{len(raw):,} bytes after decompression; its header (shape {shape}) needs {need:,}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _root(cfg: FashionMnistDataConfig, env: DataEnv) -> Path:
    root = resolve(cfg.root, env, key="root")
    require_folder(root, key="root", files=ALL_FILES, install=INSTALL)
    return root


def read_all(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every image and label under ``root``, train then t10k, checked (uint8 images, labels).

    Raises:
        DataSourceError: A corrupt file, or labels that do not match their images.
    """
    images, labels = [], []
    for part in PARTS:
        img_name, lab_name = idx_files(part)
        x = read_idx(root / img_name, magic=IMAGE_MAGIC)
        y = read_idx(root / lab_name, magic=LABEL_MAGIC)
        if len(x) != len(y):
            raise _corrupt(root / lab_name, f"{len(y):,} labels for the {len(x):,} images of {img_name}")
        if y.size and int(y.max()) >= len(CLASSES):
            raise _corrupt(root / lab_name, f"label {int(y.max())}; expected 0..{len(CLASSES) - 1}")
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def check_fashion_mnist(cfg: FashionMnistDataConfig, env: DataEnv) -> None:
    """The four files exist, decompress, and have the right magic numbers, shapes and lengths (~1 s)."""
    read_all(_root(cfg, env))


@register_source("fashion-mnist", FashionMnistDataConfig, check=check_fashion_mnist)
def load_fashion_mnist(cfg: FashionMnistDataConfig, env: DataEnv) -> TaskData:
    """Fashion-MNIST: 70,000 28x28 grey clothing images, 10 classes (IDX files, pooled).

    Args:
        cfg: ``root``: the folder of the four IDX gz files.
        env: Where a relative ``root`` starts.

    Returns:
        (N, 1, 28, 28) float32 images, normalised; train images first, then t10k.

    Raises:
        DataSourceError: The folder or a file is missing (naming the apt package), or a file is corrupt.
    """
    root = _root(cfg, env)
    images, labels = read_all(root)
    x = torch.from_numpy(images).unsqueeze(1).float()
    x = x.div_(255.0).sub_(MEAN).div_(STD)
    y = torch.from_numpy(labels.astype(np.int64))
    pre = {
        "input": "image",
        "layout": "NCHW",
        "shape": [1, SIDE, SIDE],
        "dtype": "float32",
        "normalisation": f"(pixel / 255 - {MEAN}) / {STD} (fixed constants)",
        "mean": MEAN,
        "std": STD,
        "scale": 1 / 255,
        "classes": CLASSES,
        "files": [str(root / f) for f in ALL_FILES],
    }
    return TaskData(name="fashion-mnist", inputs=x, labels=y, num_classes=len(CLASSES), preprocess=pre)
