"""Small modules that make model internals visible to compress.

Attention written with these modules (instead of bare ``@`` and ``softmax``
calls) exposes every signal the libraries need as a module input or output:
quantizers wrap ``MatMul`` inputs, Teacher Intervention replaces ``Softmax``
outputs and the input/output of the output projection through hooks, and
distillation reads scores and probabilities by module name. No library edits
model code.
"""

from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """``a @ b`` as a module, so its two inputs can be observed or quantized."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Softmax(nn.Module):
    """Softmax over the last axis as a module (attention probabilities)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)
