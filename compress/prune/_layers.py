"""Whole-layer dropping: score each layer of the layer stack by what skipping it costs, drop the cheapest.

A layer is *skipped* by replacing its output with its input (a residual block
whose branch is removed). Its importance is the calibration loss increase when
it is skipped (``score_fn`` given), or otherwise the mean squared change of the
model's output on the example inputs. The least important layers are removed
from the stack in place; the stack is found by structure
(``compress.distill.student.layer_stack``: tiny-vit ``blocks``, Hugging Face
``encoder.layer``, timm ``blocks``), and the shorter stack is what
``compress.models.resize`` records as ``depth``, so the model reloads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn


def _skip_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> Any:
    x = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
    if isinstance(out, tuple):
        return (x, *out[1:])
    return x


def _loss(score_fn: Callable[[nn.Module], Any], model: nn.Module) -> float:
    out = score_fn(model)
    losses = out if isinstance(out, (list, tuple)) else [out]
    return float(sum(float(v.detach()) for v in losses))


@torch.no_grad()
def layer_importance(
    model: nn.Module,
    example_inputs: torch.Tensor,
    *,
    score_fn: Callable[[nn.Module], Any] | None = None,
) -> tuple[str, list[float]]:
    """``(stack name, importance of each layer)``: loss increase (or output change) when it is skipped.

    Raises:
        ValueError: The model has no stack of repeated layers (e.g. a ResNet).
    """
    from compress.distill.student import layer_stack

    name, stack = layer_stack(model)
    was = model.training
    model.eval()
    try:
        base_out = model(example_inputs)
        base = _loss(score_fn, model) if score_fn is not None else 0.0
        scores: list[float] = []
        for layer in stack:
            h = layer.register_forward_hook(_skip_hook, with_kwargs=True)
            try:
                if score_fn is not None:
                    scores.append(_loss(score_fn, model) - base)
                else:
                    scores.append(float((model(example_inputs) - base_out).float().pow(2).mean()))
            finally:
                h.remove()
    finally:
        model.train(was)
    return name, scores


def drop_layers_(model: nn.Module, drop: Sequence[int]) -> list[int]:
    """Remove the layers at indices ``drop`` from the model's layer stack, in place; returns those kept.

    Raises:
        ValueError: An index is out of range, or every layer would go.
    """
    from compress.distill.student import _renumber_layer_indices, layer_stack
    from compress.models.external import sync_hf_config

    name, stack = layer_stack(model)
    n = len(stack)
    bad = [i for i in drop if not 0 <= i < n]
    if bad:
        raise ValueError(f"layers: indices {bad} out of range for a stack of {n} layers")
    keep = [i for i in range(n) if i not in set(drop)]
    if not keep:
        raise ValueError(
            f"layers.drop: dropping {len(set(drop))} of {n} layers would leave none; keep at least one"
        )
    kept = [stack[i] for i in keep]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(kept) if isinstance(stack, nn.ModuleList) else nn.Sequential(*kept))
    _renumber_layer_indices(model)
    sync_hf_config(model)
    return keep
