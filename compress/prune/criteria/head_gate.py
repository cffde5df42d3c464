"""``head_gate``: attention heads scored by the gradient of a head gate (Michel et al. 2019).

Each attention's context (the merged heads, just before the output projection)
is multiplied per head by a gate fixed at 1.0; the score of head ``h`` is
``sum over calibration batches of |dL/dgate_h|``, the first-order estimate of
how much the loss changes when the head is masked ("Are Sixteen Heads Really
Better than One?", eq. 2). FFN neurons and every other group fall back to the
first-order Taylor score ``|w * dL/dw|`` from the same backward passes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.prune._criteria import Backprop, register_criterion


class HeadGateImportance:
    """torch-pruning ``Importance`` with per-head gate scores and a Taylor fallback.

    Attributes:
        scores: First projection of each attention module (by id) -> accumulated ``|dL/dgate|`` per head.
    """

    def __init__(self) -> None:
        import torch_pruning as tp

        self.scores: dict[int, torch.Tensor] = {}
        self.fused: set[int] = set()
        self.fallback = tp.importance.GroupTaylorImportance()

    def __call__(self, group: Any) -> torch.Tensor | None:
        base = self.fallback(group)
        for dep, _ in group:
            s = self.scores.get(id(dep.target.module))
            if s is None:
                continue
            h = len(s)
            n = len(base) if base is not None else h
            if n % h:
                break
            per = n // h
            if id(dep.target.module) in self.fused and n == dep.target.module.out_features:
                # A fused qkv orders its outputs [q heads | k heads | v heads].
                return s.repeat_interleave(n // (3 * h)).repeat(3)
            return s.repeat_interleave(per)
        return base


def _reader(model: nn.Module, name: str, a: nn.Module) -> nn.Module | None:
    """The Linear that reads attention ``name``'s merged heads (its output projection)."""
    from compress.prune._graph import attention_style

    style = attention_style(a)
    if style is not None and style.out_proj:
        return getattr(a, style.out_proj, None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    out = getattr(getattr(parent, "output", None), "dense", None)  # Hugging Face: attention.output.dense
    return out if isinstance(out, nn.Linear) else None


def _prepare(importance: HeadGateImportance, model: nn.Module, backprop: Backprop) -> None:
    from compress.prune._graph import attention_modules, heads_of, projections

    importance.fused = set()
    gates: dict[int, torch.Tensor] = {}
    hooks = []
    acc: dict[int, torch.Tensor] = {}
    for name, a in attention_modules(model).items():
        reader = _reader(model, name, a)
        if reader is None:
            continue
        h = heads_of(a)
        gate = torch.ones(h, requires_grad=True, device=reader.weight.device)
        p0 = projections(a)[0]
        if len(projections(a)) == 1:
            importance.fused.add(id(p0))
        gates[id(p0)] = gate
        acc[id(p0)] = torch.zeros(h)

        def pre(
            _m: nn.Module, args: tuple[Any, ...], gate: torch.Tensor = gate, h: int = h
        ) -> tuple[Any, ...]:
            x = args[0]
            shape = x.shape
            x = (x.reshape(*shape[:-1], h, shape[-1] // h) * gate.to(x.dtype)[:, None]).reshape(shape)
            return (x, *args[1:])

        hooks.append(reader.register_forward_pre_hook(pre))

    def after_each() -> None:
        for k, g in gates.items():
            if g.grad is not None:
                acc[k] += g.grad.detach().abs().float().cpu()
                g.grad = None

    try:
        backprop(after_each)
    finally:
        for hk in hooks:
            hk.remove()
    importance.scores = acc


@register_criterion("head_gate", needs_grad=True, prepare=_prepare)
def make(**_: Any) -> Any:
    """A ``HeadGateImportance``; ``prune_`` fills its scores through ``prepare`` before each step."""
    return HeadGateImportance()
