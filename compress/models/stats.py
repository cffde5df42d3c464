"""Model size and cost: parameters, MACs (attention matmuls included), bytes."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def module_macs(model: nn.Module, example_inputs: torch.Tensor) -> tuple[int, dict[str, float]]:
    """MACs per example of the whole model and of every submodule (by name), from one forward pass.

    Counted with ``torch.utils.flop_counter`` (every matmul, including Q·Kᵀ and probs·V, which
    torch-pruning's counter misses), MACs = FLOPs / 2, divided by the batch size.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(example_inputs)
    model.train(was)
    batch = max(1, example_inputs.shape[0])
    root = type(model).__name__
    per: dict[str, float] = {}
    for key, ops in counter.get_flop_counts().items():
        if key == root or key.startswith(root + "."):
            per[key[len(root) + 1 :]] = sum(ops.values()) / 2 / batch
    return int(counter.get_total_flops() // 2 // batch), per


def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over ``example_inputs``, per example (see ``module_macs``)."""
    return module_macs(model, example_inputs)[0]
