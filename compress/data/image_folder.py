"""``image-folder``: images sorted into one folder per class, ``root/<class>/*.png|jpg``.

Classes are the sub-folder names in sorted order (label = position); hidden folders are skipped
and files with other extensions are ignored. Every image is decoded with Pillow, converted to
``channels`` (1: grey, 3: RGB), resized to ``image_size`` x ``image_size`` (bilinear) and
normalised ``(pixel / 255 - mean) / std`` per channel. An empty class folder or an image Pillow
cannot read is a ``DataSourceError`` naming it.

Example (YAML)::

    data:
      source: image-folder
      root: images/          # images/cat/*.png, images/dog/*.jpg
      image_size: 64
      channels: 3
      mean: [0.485, 0.456, 0.406]
      std: [0.229, 0.224, 0.225]
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from compress.config.schema import DataConfig
from compress.data._common import resolve, short_error
from compress.data.base import (
    DataEnv,
    DataSourceError,
    TaskData,
    register_source,
    stratified_subset,
    subset_note,
)

EXTENSIONS = (".png", ".jpg", ".jpeg")


class ImageFolderDataConfig(DataConfig):
    """Images in one sub-folder per class."""

    input_kind = "image"

    source: Literal["image-folder"] = Field(
        "image-folder", description="Registered data source (see `compress list sources`)."
    )
    root: str = Field(
        description="Folder with one sub-folder of .png/.jpg images per class (relative to the YAML)."
    )
    image_size: int = Field(
        32, ge=1, le=4096, description="Images are resized to image_size x image_size pixels."
    )
    channels: Literal[1, 3] = Field(3, description="1: greyscale, 3: RGB.")
    mean: list[float] = Field(
        default_factory=lambda: [0.5],
        min_length=1,
        max_length=3,
        description="Per-channel mean of pixel/255 (one value or one per channel).",
    )
    std: list[float] = Field(
        default_factory=lambda: [0.5],
        min_length=1,
        max_length=3,
        description="Per-channel std of pixel/255 (one value or one per channel).",
    )

    @field_validator("std")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"std values must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _per_channel(self) -> ImageFolderDataConfig:
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) not in (1, self.channels):
                raise ValueError(
                    f"{name} has {len(v)} values but channels is {self.channels}; "
                    f"give one value or {self.channels}"
                )
        return self


def scan(root: Path) -> tuple[list[str], list[Path], np.ndarray]:
    """Class names, image files and labels under ``root`` (no image is opened).

    Raises:
        DataSourceError: ``root`` is missing, has fewer than two class folders, or a class folder
            holds no image.
    """
    if not root.is_dir():
        raise DataSourceError(
            f"{root}: {'is a file, not a folder' if root.exists() else 'not found'}; expected a folder with "
            "one sub-folder of images per class; fix data.root (relative to the YAML)",
            key="root",
        )
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataSourceError(
            f"{root}: {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "expected one sub-folder of images per class, at least two",
            key="root",
        )
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        found = sorted(p for p in (root / c).iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not found:
            raise DataSourceError(
                f"{root / c}: empty class folder (no {', '.join(EXTENSIONS)} files); "
                "add images or remove the folder",
                key="root",
            )
        files.extend(found)
        labels.extend([i] * len(found))
    return classes, files, np.asarray(labels, dtype=np.int64)


def read_image(path: Path, *, size: int, channels: int) -> np.ndarray:
    """One image as a (size, size, channels) uint8 array.

    Raises:
        DataSourceError: Pillow cannot read the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise DataSourceError(
            f"{path}: cannot read the image ({short_error(e, 120)}); replace or remove the file",
            key="root",
        ) from None
    return arr.reshape(size, size, channels)


def check_image_folder(cfg: ImageFolderDataConfig, env: DataEnv) -> None:
    """The class folders exist and each holds an image file (opens none)."""
    scan(resolve(cfg.root, env, key="root"))


@register_source("image-folder", ImageFolderDataConfig, check=check_image_folder)
def load_image_folder(cfg: ImageFolderDataConfig, env: DataEnv) -> TaskData:
    """Images in root/<class>/*.png|jpg, resized and normalised (classes = sorted folder names).

    Args:
        cfg: ``root``, ``image_size``, ``channels``, ``mean``, ``std``.
        env: Where a relative ``root`` starts.

    Returns:
        (N, channels, image_size, image_size) float32 images; with ``subset``, only the subset is decoded.

    Raises:
        DataSourceError: A missing root, an empty class folder or an unreadable image (naming it).
    """
    root = resolve(cfg.root, env, key="root")
    classes, files, labels = scan(root)
    notes = {}
    if cfg.subset is not None and cfg.subset < len(files):
        keep = stratified_subset(labels, cfg.subset)
        notes["subset"] = subset_note(len(keep), len(files))
        files, labels = [files[i] for i in keep], labels[keep]
    pixels = np.stack([read_image(p, size=cfg.image_size, channels=cfg.channels) for p in files])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32).view(1, -1, 1, 1)
    x = ((x - mean) / std).contiguous()
    pre = {
        "input": "image",
        "layout": "NCHW",
        "shape": [cfg.channels, cfg.image_size, cfg.image_size],
        "dtype": "float32",
        "color": "L" if cfg.channels == 1 else "RGB",
        "resize": f"{cfg.image_size}x{cfg.image_size} bilinear",
        "normalisation": "(pixel / 255 - mean) / std per channel",
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "scale": 1 / 255,
        "classes": classes,
        "root": str(root),
        **notes,
    }
    return TaskData(
        name="image-folder",
        inputs=x,
        labels=torch.from_numpy(labels),
        num_classes=len(classes),
        preprocess=pre,
    )
