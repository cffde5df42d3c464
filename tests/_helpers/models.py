"""Tiny models and data shared by tests (real architectures shrunk through their configs)."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.data import SOURCES, TaskData, load_or_make_splits
from compress.models import build_model


def tiny_vit(depth: int = 2, dim: int = 32, num_heads: int = 4, mlp_dim: int = 64, seed: int = 0) -> torch.nn.Module:
    """A 2-block, 32-wide tiny-vit for 8x8 digits."""
    torch.manual_seed(seed)
    return build_model("tiny-vit", {"dim": dim, "depth": depth, "num_heads": num_heads, "mlp_dim": mlp_dim})


def digits(tmp_path: Path, seed: int = 0) -> TaskData:
    """The digits data set with a stored split under ``tmp_path``."""
    data = SOURCES.get("digits")()
    load_or_make_splits(data, tmp_path / "splits.json", val_fraction=0.15, test_fraction=0.15, seed=seed)
    return data
