"""Model size and cost: parameters, MACs (attention matmuls included), bytes."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return int(sum(p.numel() for p in model.parameters()))


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over ``example_inputs`` divided by its batch size.

    Counted with ``torch.utils.flop_counter`` (every matmul, including Q·Kᵀ and
    probs·V, which torch-pruning's counter misses), MACs = FLOPs / 2.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(example_inputs)
    model.train(was)
    return int(counter.get_total_flops() // 2 // max(1, example_inputs.shape[0]))
