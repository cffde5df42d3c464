"""Fold BatchNorm into the convolution before it (before QAT of a CNN).

A deployed CNN runs ``conv`` with BatchNorm's affine map already folded into
its weights and bias; quantizing the unfolded convolution would train scales
for weights that never exist at inference. ``fold_batchnorm(model)`` finds
every ``BatchNorm{1,2,3}d`` whose only input is a ``Conv{1,2,3}d`` output that
nothing else reads, and rewrites, per output channel ``c``::

    k_c  = gamma_c / sqrt(running_var_c + eps)
    W'_c = W_c · k_c
    b'_c = (b_c - running_mean_c) · k_c + beta_c     (b_c = 0 without a bias)

then replaces the BatchNorm by ``nn.Identity``. In eval mode the folded model
computes the same function (to float rounding); in training mode BatchNorm no
longer uses batch statistics (the usual "freeze BN and fold" QAT recipe).

Pairs come from a ``torch.fx`` trace of the model (or, for a wrapped outside
model, of its ``.net``), so residual branches and ``downsample`` paths are
found from the graph, not from names. A model that cannot be traced is
searched by structure instead: consecutive children of a ``Sequential`` and
sibling pairs ``convN``/``bnN``. The fold is a recorded model transform
(``fold_batchnorm``), replayed by ``load_model``.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from compress.models.registry import record_transform, register_transform

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _traced_pairs(root: nn.Module, prefix: str) -> list[tuple[str, str]] | None:
    try:
        import torch.fx

        gm = torch.fx.symbolic_trace(root)
    except Exception:  # noqa: BLE001 -- any tracing failure means: use the structural search
        return None
    mods = dict(root.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods.get(str(node.target)), _BN):
            continue
        src = node.args[0] if node.args else None
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(mods.get(str(src.target)), _CONV)
            and len(src.users) == 1
        ):
            pairs.append((prefix + str(src.target), prefix + str(node.target)))
    return pairs


def _structural_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, parent in model.named_modules():
        base = f"{name}." if name else ""
        children = list(parent.named_children())
        if isinstance(parent, nn.Sequential):
            for (cn, c), (bn_name, b) in zip(children, children[1:], strict=False):
                if isinstance(c, _CONV) and isinstance(b, _BN):
                    pairs.append((base + cn, base + bn_name))
        named = dict(children)
        for cn, c in children:
            m = re.fullmatch(r"conv(\d*)", cn)
            b = named.get(f"bn{m.group(1)}") if m else None
            if isinstance(c, _CONV) and isinstance(b, _BN):
                pairs.append((base + cn, f"{base}bn{m.group(1)}"))  # type: ignore[union-attr]
    return pairs


def fx_root(model: nn.Module) -> tuple[nn.Module, str]:
    """The module to trace with ``torch.fx`` and the prefix of its names inside ``model``.

    A wrapped outside model (``model.net``: timm, torchvision, transformers) is traced through its
    network, whose forward is the library's own; anything else is traced whole.
    """
    net = getattr(model, "net", None)
    return (net, "net.") if isinstance(net, nn.Module) else (model, "")


def batchnorm_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, batchnorm)`` qualified names of the foldable pairs of ``model``, in graph order."""
    root, prefix = fx_root(model)
    pairs = _traced_pairs(root, prefix)
    if pairs is None:
        pairs = _structural_pairs(model)
    mods = dict(model.named_modules())
    return [
        (c, b)
        for c, b in pairs
        if isinstance(mods.get(b), _BN) and mods[c].out_channels == mods[b].num_features  # type: ignore[union-attr]
    ]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def _fold_pair(conv: nn.Module, bn: nn.Module) -> None:
    assert isinstance(conv, _CONV) and isinstance(bn, _BN)
    var = bn.running_var if bn.running_var is not None else torch.ones(bn.num_features)
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros(bn.num_features)
    gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(var)
    k = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    conv.weight.mul_(k.reshape(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
    conv.bias = nn.Parameter((bias - mean) * k + beta)


def fold_batchnorm(model: nn.Module, pairs: list[tuple[str, str]] | None = None) -> int:
    """Fold BatchNorm into the preceding convolutions of ``model`` in place.

    Args:
        model: Any model; one without conv→BN pairs is left unchanged.
        pairs: The ``(conv, bn)`` names to fold (default: ``batchnorm_pairs(model)``).

    Returns:
        The number of BatchNorms folded (recorded as transform ``fold_batchnorm`` when > 0).
    """
    pairs = batchnorm_pairs(model) if pairs is None else pairs
    mods = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        _fold_pair(mods[conv_name], mods[bn_name])
        _set(model, bn_name, nn.Identity())
    if pairs:
        record_transform(model, "fold_batchnorm", {"pairs": [list(p) for p in pairs]})
    return len(pairs)


@register_transform("fold_batchnorm")
def _replay_fold(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """``load_model`` hook: the folded structure (conv with a bias, BN gone); the state dict has the values."""
    pairs = [(str(c), str(b)) for c, b in config["pairs"]]
    mods = dict(model.named_modules())
    for conv_name, bn_name in pairs:
        conv = mods[conv_name]
        if conv.bias is None:  # type: ignore[union-attr]
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels))  # type: ignore[union-attr]
        _set(model, bn_name, nn.Identity())
    record_transform(model, "fold_batchnorm", {"pairs": [list(p) for p in pairs]})
    return model
