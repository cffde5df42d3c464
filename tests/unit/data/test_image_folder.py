"""``image-folder``: root/<class>/*.png from tiny PNGs written by the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from compress.data import SOURCES, DataEnv, DataSourceError
from compress.data.image_folder import ImageFolderDataConfig
from tests.unit.data.formats import write_png_folder

SRC = SOURCES.get("image-folder")


def test_classes_sorted_images_resized_and_normalised(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "img", {"dog": 3, "cat": 2}, size=6)
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    d = SRC(
        ImageFolderDataConfig(root="img", image_size=6, mean=[0.5], std=[0.25]), DataEnv(base_dir=tmp_path)
    )
    assert d.preprocess["classes"] == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1, 1]
    assert d.inputs.shape == (5, 3, 6, 6) and d.inputs.dtype == torch.float32
    raw = np.asarray(Image.open(root / "cat" / "0.png"), dtype=np.float32)
    assert torch.allclose(d.inputs[0], (torch.from_numpy(raw).permute(2, 0, 1) / 255 - 0.5) / 0.25, atol=1e-6)


def test_grey_and_resized(tmp_path: Path) -> None:
    write_png_folder(tmp_path / "img", {"a": 2, "b": 2}, size=9)
    cfg = ImageFolderDataConfig(root=str(tmp_path / "img"), image_size=4, channels=1, subset=2)
    d = SRC(cfg, DataEnv(base_dir=tmp_path))
    assert d.inputs.shape == (2, 1, 4, 4) and d.labels.tolist() == [0, 1]
    assert d.preprocess["subset"]["examples"] == 2 and d.preprocess["color"] == "L"


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    write_png_folder(tmp_path / "img", {"a": 2})
    (tmp_path / "img" / "b").mkdir()
    with pytest.raises(DataSourceError) as ei:
        SRC.preflight(ImageFolderDataConfig(root="img"), DataEnv(base_dir=tmp_path))
    assert str(ei.value) == (
        f"data.root: {tmp_path / 'img' / 'b'}: empty class folder (no .png, .jpg, .jpeg files); "
        "add images or remove the folder"
    )


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    write_png_folder(tmp_path / "img", {"a": 2, "b": 1})
    (tmp_path / "img" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataSourceError) as ei:
        SRC(ImageFolderDataConfig(root="img"), DataEnv(base_dir=tmp_path))
    assert str(ei.value).startswith(
        f"data.root: {tmp_path / 'img' / 'b' / 'broken.png'}: cannot read the image ("
    )


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        (lambda r: None, "not found; expected a folder with one sub-folder of images per class"),
        (lambda r: write_png_folder(r, {"only": 1}), "1 class folder(s) (only); expected one sub-folder"),
    ],
)
def test_missing_or_single_class_root(tmp_path: Path, setup, expect: str) -> None:  # noqa: ANN001
    setup(tmp_path / "img")
    with pytest.raises(DataSourceError, match=r"^data.root: ") as ei:
        SRC(ImageFolderDataConfig(root="img"), DataEnv(base_dir=tmp_path))
    assert expect in str(ei.value)


def test_mean_std_per_channel_checked() -> None:
    with pytest.raises(ValidationError, match="mean has 2 values but channels is 3; give one value or 3"):
        ImageFolderDataConfig(root="x", mean=[0.1, 0.2])
    with pytest.raises(ValidationError, match=r"std values must be > 0"):
        ImageFolderDataConfig(root="x", std=[0.0])
