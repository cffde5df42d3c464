"""Entry points of the quantization library: prepare, calibrate, switch on and off.

QAT is a config plus steps on a plain ``nn.Module``:

1. ``prepare_qat(model, cfg)`` swaps every ``nn.Linear`` for a ``QuantLinear``
   and every ``MatMul`` for a ``QuantMatMul`` (the swaps are the ``QUANT_MODULES``
   registry: one entry per quantizable module type);
2. ``calibrate_(model, forward_loop)`` sets the initial scales from the data the
   caller's ``forward_loop`` runs through the model;
3. training (any loop) learns weights and scales;
4. ``compress.export.export_onnx_qdq`` writes INT8 Q/DQ ONNX from the learned scales.

``prepare_qat`` records itself on the model (transform ``qat``), so
``save_model``/``load_model`` rebuild the quantized architecture and load its
scales from the state dict.
"""

from __future__ import annotations

import fnmatch
import operator
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress._utils.registry import Registry
from compress.models import record_transform, register_transform
from compress.models.exposed import expose
from compress.models.layers import MatMul
from compress.quant import _ternary as _ternary  # registers weights.scheme 'twn'
from compress.quant.bn_fold import fold_batchnorm, fx_root
from compress.quant._fake_quant import FakeQuantizer, QuantConv2d, QuantLinear, QuantMatMul
from compress.quant.config import QuantConfig


@dataclass(frozen=True)
class QuantModuleRule:
    """How one float module type becomes its quantized counterpart.

    Attributes:
        source: The float module type, matched exactly (subclasses are not swapped,
            e.g. ``nn.MultiheadAttention``'s ``out_proj`` keeps its own class).
        convert: ``convert(module, cfg) -> quantized module``.
        applies: ``applies(cfg)``: whether the rule is active for this config.
    """

    source: type[nn.Module]
    convert: Callable[[nn.Module, QuantConfig], nn.Module]
    applies: Callable[[QuantConfig], bool]


QUANT_MODULES: Registry[QuantModuleRule] = Registry("quantizable module")
"""Quantizable module types; ``register_quant_module`` adds one without touching ``prepare_qat``."""


def register_quant_module(name: str, rule: QuantModuleRule) -> QuantModuleRule:
    """Register how a module type is quantized.

    Args:
        name: Registry key (``linear``, ``matmul``, ...).
        rule: Source type, converter and activation predicate.

    Returns:
        ``rule``.
    """
    return QUANT_MODULES.register(name)(rule)


register_quant_module("linear", QuantModuleRule(nn.Linear, QuantLinear.from_float, lambda cfg: True))  # type: ignore[arg-type]
register_quant_module(
    "matmul",
    QuantModuleRule(MatMul, QuantMatMul.from_float, lambda cfg: cfg.quantize_attention_matmuls),  # type: ignore[arg-type]
)

register_quant_module(
    "conv2d",
    QuantModuleRule(nn.Conv2d, QuantConv2d.from_float, lambda cfg: cfg.quantize_convolutions),  # type: ignore[arg-type]
)

QUANT_MODULE_TYPES = (QuantLinear, QuantConv2d, QuantMatMul)


def quantizers(model: nn.Module) -> Iterator[tuple[str, FakeQuantizer]]:
    """``(qualified name, quantizer)`` for every fake quantizer in ``model``."""
    for name, m in model.named_modules():
        if isinstance(m, FakeQuantizer):
            yield name, m


def quantized_modules(model: nn.Module) -> list[str]:
    """Qualified names of the quantized layers (``QuantLinear``/``QuantMatMul``) in ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, QUANT_MODULE_TYPES)]


def is_quantized(model: nn.Module) -> bool:
    """Whether ``prepare_qat`` has been applied to ``model``."""
    return any(True for _ in quantizers(model))


def prepare_qat(model: nn.Module, cfg: QuantConfig | None = None) -> nn.Module:
    """Insert fake quantizers into ``model`` in place and return it.

    Every module whose exact type has an active ``QUANT_MODULES`` rule is
    replaced: ``nn.Linear`` by ``QuantLinear`` (parameters shared, state-dict
    keys kept) and, with ``quantize_attention_matmuls``, ``MatMul`` by
    ``QuantMatMul`` (a Hugging Face BERT-family model first gets its attention
    exposed as modules: ``compress.models.exposed``). With ``quantize_residual_conv_outputs`` (default
    ``auto``: every CNN that torch.fx can trace, two or more convolutions), each quantized convolution in
    ``residual_conv_names(model)`` also gets an output quantizer. Each module
    gets ``cfg.for_module(name)``: the first
    override whose pattern equals its qualified name, else the first whose
    glob matches, else the defaults; an override with ``quantize: false``
    leaves the module in floating point. The transform is recorded as ``qat`` so ``load_model``
    replays it. Scales are unset until ``calibrate_`` runs.

    Args:
        model: The float model (mutated).
        cfg: Quantization settings; default ``QuantConfig()``.

    Returns:
        ``model``, quantized.

    Raises:
        ValueError: ``model`` is already quantized, contains nothing to quantize, or an
            override pattern matches no quantizable module (the message lists them).

    Example:
        >>> from compress.models import build_model
        >>> m = prepare_qat(build_model("tiny-vit", {"dim": 16, "depth": 1}))
        >>> type(m.blocks[0].attn.q).__name__, type(m.blocks[0].attn.qk).__name__
        ('QuantLinear', 'QuantMatMul')
    """
    cfg = cfg or QuantConfig()
    if is_quantized(model):
        raise ValueError(
            f"{type(model).__name__} is already quantized (prepare_qat ran before); prepare it once"
        )
    rules, targets = _quant_targets(model, cfg)
    residual = _residual_convs(model, cfg.quantize_residual_conv_outputs)
    names = [n for _, n, _, _ in targets]
    unmatched = unmatched_override_patterns(cfg, names)
    if unmatched:
        raise ValueError(
            f"quant.overrides: pattern(s) {unmatched} match no quantizable module of "
            f"{type(model).__name__}; quantizable modules: {', '.join(names)}"
        )
    swapped = 0
    for parent, name, child_name, rule in targets:
        module_cfg = cfg.for_module(name)
        if module_cfg is None:
            continue
        setattr(parent, child_name, rule.convert(getattr(parent, child_name), module_cfg))
        swapped += 1
    if swapped == 0:
        kinds = ", ".join(r.source.__name__ for r in rules)
        raise ValueError(f"{type(model).__name__} has no module to quantize (looked for {kinds})")
    for name in residual:
        conv = model.get_submodule(name)
        module_cfg = cfg.for_module(name)
        if isinstance(conv, QuantConv2d) and module_cfg is not None:
            conv.add_output_quantizer_(module_cfg)
    record_transform(model, "qat", cfg.model_dump(mode="json"))
    return model


def _residual_convs(model: nn.Module, setting: bool | str) -> list[str]:
    """``residual_conv_names(model)`` as ``quantize_residual_conv_outputs`` asks (see QuantConfig)."""
    if setting is False:
        return []
    if setting == "auto":
        # a residual block has at least two convolutions; a ViT's one patch-embedding conv is not one
        if sum(isinstance(m, nn.Conv2d) for m in model.modules()) < 2:
            return []
        try:
            return residual_conv_names(model)
        except ValueError as e:
            warnings.warn(
                f"{e.args[0]}; with quantize_residual_conv_outputs: auto the residual convolutions keep "
                "float outputs (ONNX Runtime CPU then runs them in float)",
                RuntimeWarning,
                stacklevel=3,
            )
            return []
    return residual_conv_names(model)


_ADDS = (operator.add, operator.iadd, torch.add)


def residual_conv_names(model: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Conv2d`` modules whose output goes only into residual additions.

    Found from a ``torch.fx`` trace (of ``model.net`` for a wrapped outside model, as BatchNorm
    folding does): a convolution qualifies when every path from its output, through ``nn.Identity``
    modules (folded BatchNorms), ends at an ``add``. These are the convolutions ``prepare_qat`` gives
    an output quantizer with ``quantize_residual_conv_outputs``.

    Args:
        model: A float model with its BatchNorms folded (``prepare_qat`` calls this after folding and
            before swapping the convolutions); an unfolded BatchNorm between a convolution and the
            add disqualifies it.

    Returns:
        Names in graph order.

    Raises:
        ValueError: ``model`` cannot be traced by ``torch.fx``.

    Example:
        >>> from compress.models import build_model
        >>> m = build_model("torchvision", {"arch": "resnet18", "num_classes": 10})
        >>> fold_batchnorm(m)
        20
        >>> residual_conv_names(m)[:3]
        ['net.layer1.0.conv2', 'net.layer1.1.conv2', 'net.layer2.0.conv2']
    """
    import torch.fx

    root, prefix = fx_root(model)
    try:
        gm = torch.fx.symbolic_trace(root)
    except Exception as e:
        raise ValueError(
            f"quant.quantize_residual_conv_outputs: {type(model).__name__} cannot be traced by torch.fx "
            f"({type(e).__name__}: {e}); set quantize_residual_conv_outputs: false"
        ) from e
    mods = dict(root.named_modules())

    def only_adds(node: torch.fx.Node) -> bool:
        users = list(node.users)
        return bool(users) and all(
            (u.op == "call_function" and u.target in _ADDS)
            or (u.op == "call_method" and u.target in ("add", "add_"))
            or (u.op == "call_module" and isinstance(mods.get(str(u.target)), nn.Identity) and only_adds(u))
            for u in users
        )

    return [
        prefix + str(n.target)
        for n in gm.graph.nodes
        if n.op == "call_module" and type(mods.get(str(n.target))) is nn.Conv2d and only_adds(n)
    ]


def _quant_targets(
    model: nn.Module, cfg: QuantConfig
) -> tuple[list[QuantModuleRule], list[tuple[nn.Module, str, str, QuantModuleRule]]]:
    """``prepare_qat``'s structural steps (BN folding, attention exposure; in place), then the active
    rules and every ``(parent, qualified name, child name, rule)`` it would swap."""
    if cfg.fold_batchnorm:
        fold_batchnorm(model)  # CNNs: conv + BN -> conv (no-op without such pairs)
    if cfg.quantize_attention_matmuls:
        expose(model)  # HF BERT family, timm ViT: Q·Kᵀ and probs·V become MatMul modules (no-op otherwise)
    rules = [rule for _, rule in QUANT_MODULES.items() if rule.applies(cfg)]
    by_type = {rule.source: rule for rule in rules}
    targets = [
        (parent, f"{parent_name}.{child_name}".lstrip("."), child_name, by_type[type(child)])
        for parent_name, parent in list(model.named_modules())
        for child_name, child in list(parent.named_children())
        if type(child) in by_type
    ]
    return rules, targets


def quantizable_module_names(model: nn.Module, cfg: QuantConfig | None = None) -> list[str]:
    """Qualified names of the modules ``prepare_qat(model, cfg)`` would quantize before overrides apply.

    Applies ``prepare_qat``'s structural steps to ``model`` in place (BatchNorm folding, attention
    exposure), so pass a copy or a model built on the ``meta`` device (``compress validate`` does:
    no weights are needed).

    Args:
        model: The float model (mutated as described).
        cfg: Quantization settings; default ``QuantConfig()``.

    Returns:
        Names in ``named_modules`` order.

    Example:
        >>> from compress.models import build_model
        >>> with torch.device("meta"):
        ...     m = build_model("tiny-vit", {"dim": 16, "depth": 1})
        >>> quantizable_module_names(m)[:3]
        ['patch_embed', 'head', 'blocks.0.attn.q']
    """
    return [n for _, n, _, _ in _quant_targets(model, cfg or QuantConfig())[1]]


def unmatched_override_patterns(cfg: QuantConfig, names: list[str]) -> list[str]:
    """The ``cfg.overrides`` patterns that equal no name in ``names`` and match none as an fnmatch glob.

    ``prepare_qat`` refuses a config with any (a typo would otherwise silently quantize the layer).

    Example:
        >>> cfg = QuantConfig.model_validate({"overrides": [{"pattern": "head"}, {"pattern": "blocks.9.*"}]})
        >>> unmatched_override_patterns(cfg, ["head", "blocks.0.attn.q"])
        ['blocks.9.*']
    """
    return [
        o.pattern
        for o in cfg.overrides
        if not any(o.pattern == n or fnmatch.fnmatchcase(n, o.pattern) for n in names)
    ]


@register_transform("qat")
def _replay_qat(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """``load_model`` hook: re-insert the quantizers recorded by ``prepare_qat``."""
    return prepare_qat(model, QuantConfig.model_validate(config))


@torch.no_grad()
def calibrate_(model: nn.Module, forward_loop: Callable[[nn.Module], Any]) -> None:
    """Set every quantizer's scale from statistics collected while ``forward_loop`` runs.

    During the loop the quantizers pass values through unchanged (the model
    computes in full precision) and record ``max |x|`` (weights per output
    channel; activations per the calibration method). Afterwards
    ``scale = amax / qmax`` (``amax / 127`` for 8 bits). The model runs in
    eval mode during calibration and gets its training flag back after.

    Args:
        model: A model prepared with ``prepare_qat`` (mutated: scales set).
        forward_loop: ``forward_loop(model)`` runs calibration batches through ``model``.

    Raises:
        ValueError: ``model`` has no quantizers.
        RuntimeError: A quantizer saw no data (the loop ran no batch through it).

    Example:
        >>> x = torch.randn(8, 1, 8, 8)
        >>> calibrate_(m, lambda model: model(x))  # doctest: +SKIP
    """
    qs = list(quantizers(model))
    if not qs:
        raise ValueError(f"{type(model).__name__} has no quantizers; call prepare_qat(model, cfg) first")
    was = model.training
    states = [(q, q.enabled) for _, q in qs]
    model.eval()
    try:
        for _, q in qs:
            q.enabled = True
            q.start_observing_()
        forward_loop(model)
        for name, q in qs:
            q.finish_observing_(name)
    finally:
        for q, enabled in states:
            q._observing = False
            q._stats = []
            q.enabled = enabled
        model.train(was)


def set_quant_enabled_(model: nn.Module, enabled: bool) -> int:
    """Switch every fake quantizer in ``model`` on or off, in place.

    Disabled quantizers are the identity, so a disabled model computes exactly
    what the float model with the same weights computes.

    Args:
        model: Any model (models without quantizers are left as they are).
        enabled: True for fake-quant, False for full precision.

    Returns:
        The number of quantizers switched.
    """
    n = 0
    for _, q in quantizers(model):
        q.enabled = enabled
        n += 1
    return n
