"""Tiny real architectures for the pruning tests, shrunk through their configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.export import export_onnx
from compress.models import build_model
from tests._helpers.models import tiny_bert


def bert(seed: int = 0) -> torch.nn.Module:
    """2-layer BERT (hidden 32, 4 heads, FFN 64, vocab 100) with a 5-class head."""
    return tiny_bert(seed)


def bert_ids(n: int = 4) -> torch.Tensor:
    """Token ids with some padding."""
    ids = torch.randint(1, 100, (n, 12), generator=torch.Generator().manual_seed(0))
    ids[:, 9:] = 0
    return ids


def vit(seed: int = 0, depth: int = 2) -> torch.nn.Module:
    """timm vit_tiny_patch16_224 shrunk: 16x16 one-channel images, patch 4, 32 wide, 4 heads."""
    torch.manual_seed(seed)
    kw = {"img_size": 16, "patch_size": 4, "depth": depth, "embed_dim": 32, "num_heads": 4}
    return build_model(
        "timm", {"arch": "vit_tiny_patch16_224", "num_classes": 10, "in_chans": 1, "kwargs": kw}
    ).eval()


def vit_x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def resnet(seed: int = 0) -> torch.nn.Module:
    """torchvision resnet18, one input channel, 3x3 stem without max-pool (run on 8x8 inputs)."""
    torch.manual_seed(seed)
    return build_model(
        "torchvision", {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"}
    ).eval()


def resnet_x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def onnx_parity(model: torch.nn.Module, x: torch.Tensor, tmp_path: Path) -> float:
    """Largest |ORT - eager| over the logits of ``x`` after ``torch.onnx.export`` (via export_onnx)."""
    import onnxruntime as ort

    path = export_onnx(model, tmp_path / "m.onnx", x[:2])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert got.shape == expected.shape
    return float(np.abs(got - expected).max())
