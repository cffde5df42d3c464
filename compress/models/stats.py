"""Model size and cost: parameters, MACs (attention matmuls included), bytes."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return int(sum(p.numel() for p in model.parameters()))


def count_streamed_params(model: nn.Module) -> int:
    """Parameters a forward pass reads whole: all of them but lookup tables (``nn.Embedding`` weights).

    A pass reads only the rows of an embedding table that its tokens select (at most batch x tokens rows
    of a 30,522-row vocabulary), so counting the whole table would overstate the bytes a pass must move
    and put the roofline floor above what a pass can take. A table whose weight a dense layer also uses
    (a tied output projection) is read whole and counted.

    Example:
        >>> from torch import nn
        >>> count_streamed_params(nn.Sequential(nn.Embedding(1000, 8), nn.Linear(8, 2)))
        18
    """
    dense = {
        id(p)
        for m in model.modules()
        if not isinstance(m, nn.Embedding)
        for p in m.parameters(recurse=False)
    }
    tables = {
        id(m.weight): m.weight.numel()
        for m in model.modules()
        if isinstance(m, nn.Embedding) and id(m.weight) not in dense
    }
    return count_params(model) - sum(tables.values())


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
