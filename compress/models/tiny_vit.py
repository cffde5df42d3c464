"""``tiny-vit``: a small pre-LN patch Transformer for small images (the demo model).

Image -> non-overlapping patches -> linear patch embedding -> [CLS] + learned
positions -> ``depth`` pre-LN blocks -> LayerNorm -> linear head on [CLS].

Each block is ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``. Attention uses
separate ``nn.Linear`` q/k/v/o projections, a ``MatMul`` for Q·Kᵀ and one for
probs·V and a ``Softmax`` module, so heads can be pruned (the head count is an
attribute derived from the q/k/v widths) and the attention signals can be
quantized or intervened through hooks. Blocks may differ in head count and MLP
width after pruning; ``spec()`` reads the widths off the modules, so a pruned
model rebuilds exactly from its spec.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from compress.models.layers import MatMul, Softmax
from compress.models.registry import register_family


class Attention(nn.Module):
    """Multi-head self-attention with prunable heads.

    Args:
        dim: Model width.
        num_heads: Number of heads.
        head_dim: Width of each head.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        inner = num_heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(dim, inner)
        self.v = nn.Linear(dim, inner)
        self.o = nn.Linear(inner, dim)
        self.qk = MatMul()
        self.softmax = Softmax()
        self.pv = MatMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.num_heads
        # -1 for the head width: correct after heads or head dims are pruned.
        q = self.q(x).reshape(b, n, h, -1).transpose(1, 2)
        k = self.k(x).reshape(b, n, h, -1).transpose(1, 2)
        v = self.v(x).reshape(b, n, h, -1).transpose(1, 2)
        q = q * (1.0 / math.sqrt(q.shape[-1]))
        scores = self.qk(q, k.transpose(-2, -1))
        probs = self.softmax(scores)
        ctx = self.pv(probs, v)
        ctx = ctx.transpose(1, 2).reshape(b, n, -1)
        return self.o(ctx)


class Mlp(nn.Module):
    """Two Linear layers with GELU between them."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN Transformer block."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, head_dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """Small pre-LN Vision Transformer.

    Args:
        image_size: Input height and width in pixels (square).
        patch_size: Patch height and width; must divide ``image_size``.
        in_chans: Input channels.
        num_classes: Output classes.
        dim: Model width.
        blocks: One dict per block with ``num_heads``, ``head_dim``, ``mlp_dim``.

    Example:
        >>> m = build_tiny_vit(num_classes=10)
        >>> m(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        image_size: int,
        patch_size: int,
        in_chans: int,
        num_classes: int,
        dim: int,
        blocks: list[dict[str, int]],
    ) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} does not divide image_size {image_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_chans * patch_size * patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            Block(dim, b["num_heads"], b["head_dim"], b["mlp_dim"]) for b in blocks
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, patches, C·p·p)."""
        b, c, hh, ww = x.shape
        p = self.patch_size
        x = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (hh // p) * (ww // p), c * p * p)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus [CLS] and positions: the input of block 0."""
        tokens = self.patch_embed(self.patchify(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h)[:, 0])

    def spec(self) -> dict[str, Any]:
        """Architecture spec read off the current module shapes (valid after pruning)."""
        blocks = []
        for blk in self.blocks:
            a = blk.attn
            blocks.append(
                {
                    "num_heads": a.num_heads,
                    "head_dim": a.q.out_features // a.num_heads,
                    "mlp_dim": blk.mlp.fc1.out_features,
                }
            )
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "in_chans": self.in_chans,
            "num_classes": self.head.out_features,
            "dim": self.head.in_features,
            "blocks": blocks,
        }

    def example_inputs(self, batch: int = 2) -> torch.Tensor:
        """A random input batch of the right shape."""
        return torch.randn(batch, self.in_chans, self.image_size, self.image_size)


@register_family("tiny-vit")
def build_tiny_vit(
    *,
    image_size: int = 8,
    patch_size: int = 2,
    in_chans: int = 1,
    num_classes: int = 10,
    dim: int = 64,
    depth: int = 4,
    num_heads: int = 4,
    head_dim: int | None = None,
    mlp_dim: int | None = None,
    blocks: list[dict[str, int]] | None = None,
) -> TinyViT:
    """Build a ``tiny-vit`` from uniform sizes or an explicit per-block list.

    ``blocks`` (as written by ``TinyViT.spec()``) overrides ``depth``,
    ``num_heads``, ``head_dim`` and ``mlp_dim``.
    """
    if blocks is None:
        hd = head_dim if head_dim is not None else dim // num_heads
        md = mlp_dim if mlp_dim is not None else 2 * dim
        blocks = [{"num_heads": num_heads, "head_dim": hd, "mlp_dim": md} for _ in range(depth)]
    return TinyViT(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        dim=dim,
        blocks=blocks,
    )
