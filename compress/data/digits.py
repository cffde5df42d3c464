"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes).

The default data source: it ships with scikit-learn, so a pipeline with ``data: {source: digits}``
(or no ``data:`` at all) runs anywhere.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from compress.config.schema import DataConfig
from compress.data.base import DataEnv, TaskData, register_source

MEAN = 0.3
STD = 0.4


class DigitsDataConfig(DataConfig):
    """scikit-learn's 8x8 digits; no keys besides the shared ones."""

    input_kind = "image"

    source: Literal["digits"] = Field(
        "digits", description="Registered data source (see `compress list sources`)."
    )


@register_source("digits", DigitsDataConfig)
def load_digits(cfg: DigitsDataConfig | None = None, env: DataEnv | None = None) -> TaskData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

    Loads the images as (N, 1, 8, 8) floats: (pixel / 16 - 0.3) / 0.4. The mean and std are fixed
    round constants near the data's (0.305, 0.377), not fitted, so no statistic leaks from the test
    split; centring makes the ViT train several times faster.

    Args:
        cfg: Unused (digits has no keys of its own).
        env: Unused (nothing to read from disk).

    Returns:
        The data set, without splits.
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
        "classes": [str(i) for i in range(10)],
    }
    return TaskData(name="digits", inputs=x, labels=y, num_classes=10, preprocess=pre)
