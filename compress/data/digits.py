"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

import torch

from compress.data.base import SOURCES, TaskData


@SOURCES.register("digits")
def load_digits() -> TaskData:
    """Load the digits as (N, 1, 8, 8) floats in [0, 1] (pixel / 16)."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    pre = {
        "input": "image",
        "layout": "NCHW",
        "shape": [1, 8, 8],
        "dtype": "float32",
        "normalisation": "pixel / 16 (scikit-learn digits pixels are 0..16)",
    }
    return TaskData(name="digits", inputs=x, labels=y, num_classes=10, preprocess=pre)
