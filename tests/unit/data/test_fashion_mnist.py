"""Fashion-MNIST from IDX gz files written by the test: pooling, normalisation, every corruption named."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.data import SOURCES, DataEnv, DataSourceError
from compress.data.fashion_mnist import DEFAULT_ROOT, MEAN, STD, FashionMnistDataConfig, idx_files
from tests.unit.data.formats import idx_bytes, write_fashion

SRC = SOURCES.get("fashion-mnist")


def load(root: Path, tmp_path: Path, **kw: object):  # noqa: ANN201
    return SRC(FashionMnistDataConfig(root=str(root), **kw), DataEnv(base_dir=tmp_path))


def test_pools_train_and_test_and_normalises(tmp_path: Path) -> None:
    images, labels = write_fashion(tmp_path / "fm", n_train=30, n_test=10)
    d = load(tmp_path / "fm", tmp_path)
    assert d.inputs.shape == (40, 1, 28, 28) and d.inputs.dtype == torch.float32
    assert torch.equal(d.labels, torch.from_numpy(labels.astype(np.int64)))
    want = (torch.from_numpy(images).float() / 255 - 0.2860) / 0.3530
    assert torch.allclose(d.inputs[:, 0], want, atol=1e-6)
    assert d.num_classes == 10 and d.preprocess["mean"] == MEAN and d.preprocess["std"] == STD
    assert d.preprocess["classes"][0] == "T-shirt/top" and d.preprocess["shape"] == [1, 28, 28]


def test_relative_root_starts_at_the_yaml_folder(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fm")
    d = SRC(FashionMnistDataConfig(root="fm"), DataEnv(base_dir=tmp_path))
    assert len(d.labels) == 40


def test_missing_folder_names_the_apt_package(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError) as ei:
        load(tmp_path / "empty", tmp_path)
    msg = str(ei.value)
    assert msg.startswith(f"data.root: {tmp_path / 'empty'}: not found")
    assert "apt-get install dataset-fashion-mnist" in msg


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_fashion(tmp_path / "fm")
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(
        DataSourceError, match=r"t10k-labels-idx1-ubyte.gz: not found .*apt-get install dataset-fashion-mnist"
    ):
        load(tmp_path / "fm", tmp_path)


def _corrupt(root: Path, name: str, data: bytes) -> Path:
    (root / name).write_bytes(data)
    return root / name


@pytest.mark.parametrize(
    ("name", "make", "expect"),
    [
        ("train-images-idx3-ubyte.gz", lambda b: b[: len(b) // 2], "cannot decompress it (EOFError"),
        ("train-labels-idx1-ubyte.gz", lambda b: b"not gzip at all", "cannot decompress it (BadGzipFile"),
        (
            "train-images-idx3-ubyte.gz",
            lambda b: gzip.compress(idx_bytes(np.zeros((3, 28, 28)), magic=0x00000801)),
            "IDX magic number 0x00000801, expected 0x00000803",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            lambda b: gzip.compress(idx_bytes(np.zeros((3, 28, 28)))[:-5]),
            "2,363 bytes after decompression; its header (shape (3, 28, 28)) needs 2,368",
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            lambda b: gzip.compress(idx_bytes(np.zeros((3, 32, 32)))),
            "IDX shape (3, 32, 32), expected (N, 28, 28)",
        ),
        (
            "t10k-labels-idx1-ubyte.gz",
            lambda b: gzip.compress(idx_bytes(np.zeros(7))),
            "7 labels for the 10 images of t10k-images-idx3-ubyte.gz",
        ),
        (
            "train-labels-idx1-ubyte.gz",
            lambda b: gzip.compress(idx_bytes(np.full(30, 12))),
            "label 12; expected 0..9",
        ),
        ("train-labels-idx1-ubyte.gz", lambda b: gzip.compress(b"\0\0"), "IDX magic number 2 bytes"),
    ],
    ids=[
        "truncated-gzip",
        "not-gzip",
        "wrong-magic",
        "short-body",
        "wrong-size",
        "count-mismatch",
        "bad-label",
        "tiny",
    ],
)
def test_corrupt_file_is_named_with_the_fix(tmp_path: Path, name: str, make, expect: str) -> None:  # noqa: ANN001
    root = tmp_path / "fm"
    write_fashion(root)
    path = _corrupt(root, name, make((root / name).read_bytes()))
    for fn in (
        lambda: load(root, tmp_path),
        lambda: SRC.preflight(FashionMnistDataConfig(root=str(root)), DataEnv(tmp_path)),
    ):
        with pytest.raises(DataSourceError) as ei:
            fn()
        msg = str(ei.value)
        assert msg.startswith(f"data.root: {path}: "), msg
        assert expect in msg and "apt-get install --reinstall dataset-fashion-mnist" in msg
        assert "\n" not in msg


def test_idx_file_names() -> None:
    assert idx_files("t10k") == ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_installed_files_pass_the_preflight_check(tmp_path: Path) -> None:
    SRC.preflight(FashionMnistDataConfig(), DataEnv(base_dir=tmp_path))
