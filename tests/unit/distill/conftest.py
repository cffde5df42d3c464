"""Tiny real architectures for the distillation tests, shrunk through their own configs."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class HFText(nn.Module):
    """A Hugging Face classifier behind one token-id input, as the pipeline wraps one (``.net``, ``.pad_token_id``)."""

    def __init__(self, net: nn.Module, pad_token_id: int = 0) -> None:
        super().__init__()
        self.net = net
        self.pad_token_id = pad_token_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=x, attention_mask=(x != self.pad_token_id).long()).logits


@pytest.fixture
def bert() -> Callable[..., HFText]:
    """``bert(layers=2, hidden=32, heads=4, seed=0, attn="sdpa")``: BertForSequenceClassification, 10 labels."""
    from transformers import BertConfig, BertForSequenceClassification

    def make(layers: int = 2, hidden: int = 32, heads: int = 4, seed: int = 0, attn: str = "sdpa") -> HFText:
        torch.manual_seed(seed)
        cfg = BertConfig(
            num_hidden_layers=layers,
            hidden_size=hidden,
            num_attention_heads=heads,
            intermediate_size=64,
            vocab_size=100,
            num_labels=10,
            attn_implementation=attn,
        )
        return HFText(BertForSequenceClassification(cfg))

    return make


@pytest.fixture
def tokens() -> torch.Tensor:
    """Three sequences of 7 token ids; the first two end in padding (id 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 100, (3, 7), generator=g)
    x[0, 4:] = 0
    x[1, 6:] = 0
    return x


@pytest.fixture
def vit() -> Callable[..., nn.Module]:
    """``vit(depth=2, seed=0)``: timm ViT-Tiny at 32x32, patch 8, 10 classes (3 heads, width 192)."""
    import timm

    def make(depth: int = 2, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=10, depth=depth
        )

    return make


@pytest.fixture
def resnet() -> Callable[..., nn.Module]:
    """``resnet(seed=0, half=False)``: torchvision resnet18, 10 classes; ``half`` halves every width."""
    import torchvision

    def make(seed: int = 0, half: bool = False) -> nn.Module:
        torch.manual_seed(seed)
        m = torchvision.models.resnet18(num_classes=10)
        if half:
            _halve_resnet(m)
        return m

    return make


def _halve_resnet(m: nn.Module) -> None:
    """Halve every conv/BN width of a resnet18 in place (a half-width student with the same module names)."""
    for name, mod in list(m.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Conv2d):
                cin = child.in_channels if child.in_channels == 3 else child.in_channels // 2
                new = nn.Conv2d(
                    cin, child.out_channels // 2, child.kernel_size, child.stride, child.padding, bias=False
                )
                setattr(mod, child_name, new)
            elif isinstance(child, nn.BatchNorm2d):
                setattr(mod, child_name, nn.BatchNorm2d(child.num_features // 2))
            elif isinstance(child, nn.Linear) and name == "":
                setattr(mod, child_name, nn.Linear(child.in_features // 2, child.out_features))
