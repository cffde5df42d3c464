"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)."""

from __future__ import annotations

import torch

from compress.data.base import SOURCES, TaskData

MEAN = 0.3
STD = 0.4


@SOURCES.register("digits")
def load_digits() -> TaskData:
    """Load the digits as (N, 1, 8, 8) floats: (pixel / 16 - 0.3) / 0.4.

    The mean and std are fixed round constants near the data's (0.305, 0.377), not fitted,
    so no statistic leaks from the test split; centring makes the ViT train several times faster.
    """
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0 - MEAN) / STD
    y = torch.tensor(d.target, dtype=torch.long)
    pre = {
        "input": "image",
        "layout": "NCHW",
        "shape": [1, 8, 8],
        "dtype": "float32",
        "normalisation": "(pixel / 16 - 0.3) / 0.4 (scikit-learn digits pixels are 0..16)",
        "mean": MEAN,
        "std": STD,
        "scale": 1 / 16,
    }
    return TaskData(name="digits", inputs=x, labels=y, num_classes=10, preprocess=pre)
