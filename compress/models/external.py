"""Models from outside libraries: torchvision, timm, Hugging Face transformers, Python factories.

Each source is a registered family, so a pipeline names it like the built-in
ones (``teacher: {source: torchvision, arch: resnet18, num_classes: 10}``).
The built model is a ``SourceModel``: the library's module sits in ``.net``
(module names read ``net.layer1.0.conv1``, ``net.bert.encoder.layer.3...``),
``forward(x)`` maps the pipeline's one input tensor to logits, and ``spec()``
gives a JSON config that rebuilds the current architecture without reading the
original weights or pickling code: the source's own build arguments plus a
``structure`` record (``compress.models.resize``) of the layers dropped and the
modules narrowed since, so students and pruned models save and reload too.

Text models take a LongTensor of token ids (B, L); the attention mask is
``ids != pad_token_id``, computed inside the model so exported graphs have one
input. Nothing is ever downloaded: ``HF_HUB_OFFLINE=1`` is set before
transformers is imported and pretrained torchvision/timm weights are not
fetched (give weights with ``checkpoint:``).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any

import torch
from torch import nn

from compress._utils.imports import FactoryImportError, import_callable
from compress._utils.paths import resolve_path
from compress.errors import BadInputError, MissingDependency
from compress.models.registry import register_family
from compress.models.resize import apply_structure, is_empty, structure_diff


def _require(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == module.split(".")[0]:
            raise MissingDependency(
                f"model source needs the '{module}' package, which is not installed; "
                f"install it with: pip install 'compress[{extra}]'"
            ) from None
        raise


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return _require("transformers", "nlp")


class SourceModel(nn.Module):
    """A model from an outside library behind the pipeline's interface (one tensor in, logits out).

    Attributes:
        net: The library's module.
        source: Family name (``torchvision``, ``timm``, ``hf``, ``factory``).
        build_config: Arguments that rebuild the original architecture (no weights read).
        input_kind: ``image`` or ``token_ids``.
        pad_token_id: Padding id of token inputs (mask = ids != pad_token_id); ``None`` for images.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        source: str,
        build_config: dict[str, Any],
        input_kind: str = "image",
        pad_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.source = source
        self.build_config = build_config
        self.input_kind = input_kind
        self.pad_token_id = pad_token_id

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "token_ids":
            mask = (x != (self.pad_token_id if self.pad_token_id is not None else 0)).long()
            return self.net(input_ids=x, attention_mask=mask).logits
        out = self.net(pixel_values=x) if self.source == "hf" else self.net(x)
        return out.logits if hasattr(out, "logits") else out

    def spec(self) -> dict[str, Any]:
        """Build arguments plus the structure record that turns a fresh build into this model."""
        reference = _BUILDERS[self.source](**self.build_config)
        record = structure_diff(self.net, reference.net)
        out = dict(self.build_config)
        if not is_empty(record):
            out["structure"] = record
        return out


def _finish(model: SourceModel, structure: dict[str, Any] | None) -> SourceModel:
    if structure:
        apply_structure(model.net, structure)
        sync_hf_config(model)
    return model


def sync_hf_config(model: nn.Module) -> None:
    """Make a Hugging Face model's config agree with its modules after layers were dropped.

    Sets ``num_hidden_layers`` to the length of the encoder's layer list (what ``save_pretrained``
    writes); other width changes stay in the structure record.
    """
    net = getattr(model, "net", None)
    cfg = getattr(net, "config", None)
    if cfg is None or not hasattr(cfg, "num_hidden_layers"):
        return
    for name, m in net.named_modules():  # type: ignore[union-attr]
        if name.endswith("encoder.layer") and isinstance(m, nn.ModuleList):
            cfg.num_hidden_layers = len(m)
            return


# --- torchvision ------------------------------------------------------------------------------------


def _adapt_first_conv(net: nn.Module, in_chans: int, *, stem: str) -> None:
    """Give the first convolution ``in_chans`` inputs; ``stem: cifar`` also makes a ResNet stem 3x3/1 without max-pool."""
    first_name, first = next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if first is None:
        raise BadInputError("the model has no Conv2d to adapt to in_chans; drop in_chans")
    if stem == "cifar":
        if not hasattr(net, "maxpool"):
            raise BadInputError("stem: cifar applies to ResNet-style models (conv1 + maxpool); drop it")
        new = nn.Conv2d(in_chans, first.out_channels, 3, stride=1, padding=1, bias=first.bias is not None)
        net.maxpool = nn.Identity()
    elif in_chans != first.in_channels:
        new = nn.Conv2d(
            in_chans,
            first.out_channels,
            first.kernel_size,  # type: ignore[arg-type]
            stride=first.stride,  # type: ignore[arg-type]
            padding=first.padding,  # type: ignore[arg-type]
            bias=first.bias is not None,
        )
    else:
        return
    parent_name, _, attr = first_name.rpartition(".")  # type: ignore[union-attr]
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, new)


@register_family("torchvision")
def torchvision_model(
    arch: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    stem: str = "imagenet",
    structure: dict[str, Any] | None = None,
) -> nn.Module:
    """A torchvision classification model (random init; weights come from ``checkpoint:``).

    Args:
        arch: Model name as in ``torchvision.models.list_models()`` (``resnet18``...).
        num_classes: Classifier outputs.
        in_chans: Input channels; the first convolution is rebuilt when it is not 3.
        stem: ``imagenet`` (the architecture's own) or ``cifar`` (ResNet: 3x3 stride-1 first conv, no
            max-pool; the usual choice for 28x28 or 32x32 images).
        structure: Structure record of a student or pruned model (written by ``spec()``).
    """
    tv = _require("torchvision", "vision")
    if stem not in ("imagenet", "cifar"):
        raise BadInputError(f"stem: {stem!r} is not one of imagenet, cifar")
    names = tv.models.list_models(module=tv.models)
    if arch not in names:
        from compress._utils.registry import did_you_mean

        raise BadInputError(f"unknown torchvision arch '{arch}'{did_you_mean(arch, names)}")
    net = tv.models.get_model(arch, weights=None, num_classes=num_classes)
    if in_chans != 3 or stem != "imagenet":
        _adapt_first_conv(net, in_chans, stem=stem)
    cfg = {"arch": arch, "num_classes": num_classes, "in_chans": in_chans, "stem": stem}
    return _finish(SourceModel(net, source="torchvision", build_config=cfg), structure)


# --- timm -------------------------------------------------------------------------------------------


@register_family("timm")
def timm_model(
    arch: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    kwargs: dict[str, Any] | None = None,
    structure: dict[str, Any] | None = None,
) -> nn.Module:
    """A timm model (random init; weights come from ``checkpoint:``).

    Args:
        arch: timm model name (``vit_tiny_patch16_224``, ``resnet18``...).
        num_classes: Classifier outputs.
        in_chans: Input channels.
        kwargs: Further ``timm.create_model`` keywords (``img_size``, ``patch_size``, ``depth``...).
        structure: Structure record of a student or pruned model (written by ``spec()``).
    """
    timm = _require("timm", "vision")
    if not timm.is_model(arch):
        from compress._utils.registry import did_you_mean

        raise BadInputError(f"unknown timm arch '{arch}'{did_you_mean(arch, timm.list_models())}")
    kw = dict(kwargs or {})
    net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw)
    cfg = {"arch": arch, "num_classes": num_classes, "in_chans": in_chans, "kwargs": kw}
    return _finish(SourceModel(net, source="timm", build_config=cfg), structure)


# --- Hugging Face transformers ----------------------------------------------------------------------

_HF_TASKS = {
    "sequence-classification": ("AutoModelForSequenceClassification", "token_ids"),
    "image-classification": ("AutoModelForImageClassification", "image"),
}


def _json_config(cfg: Any) -> dict[str, Any]:
    d = json.loads(cfg.to_json_string(use_diff=False))
    for k in ("_name_or_path", "transformers_version", "architectures"):
        d.pop(k, None)
    return d


@register_family("hf")
def hf_model(
    path: str | None = None,
    num_labels: int = 2,
    task: str = "sequence-classification",
    hf_config: dict[str, Any] | None = None,
    pad_token_id: int | None = None,
    attn_implementation: str = "sdpa",
    structure: dict[str, Any] | None = None,
) -> nn.Module:
    """A Hugging Face transformers model from a local directory (offline), with a classification head.

    Args:
        path: Model directory (``config.json`` + weights), ``pkg:<package>/<dir>`` for one inside an
            installed package, or relative to the pipeline file. Its pretrained weights are loaded;
            the head is new when the directory has none for ``num_labels``.
        num_labels: Classes of the head.
        task: ``sequence-classification`` (inputs: token ids) or ``image-classification``.
        hf_config: A config dict instead of ``path`` (random init; what ``spec()`` writes).
        pad_token_id: Padding id of token inputs (default: the config's, else 0).
        attn_implementation: ``sdpa`` or ``eager``.
        structure: Structure record of a student or pruned model (written by ``spec()``).
    """
    tf = _transformers()
    if task not in _HF_TASKS:
        raise BadInputError(f"task: {task!r} is not one of {', '.join(_HF_TASKS)}")
    auto_name, input_kind = _HF_TASKS[task]
    auto = getattr(tf, auto_name)
    if (path is None) == (hf_config is None):
        raise BadInputError("give exactly one of path (a model directory) or hf_config")
    if path is not None:
        folder = resolve_path(path)
        if not (folder / "config.json").is_file():
            raise BadInputError(f"{folder}: not a Hugging Face model directory (no config.json)")
        if torch.get_default_device().type == "meta":  # `compress validate`: check the folder, read no weights
            cfg_obj = tf.AutoConfig.from_pretrained(str(folder), num_labels=num_labels, local_files_only=True)
            net = auto.from_config(cfg_obj, attn_implementation=attn_implementation)
            return SourceModel(net, source="hf", build_config={}, input_kind=input_kind)
        net = auto.from_pretrained(
            str(folder),
            num_labels=num_labels,
            local_files_only=True,
            attn_implementation=attn_implementation,
            ignore_mismatched_sizes=True,
            dtype=torch.float32,
        )
    else:
        assert hf_config is not None
        d = dict(hf_config)
        model_type = d.pop("model_type")
        d["num_labels"] = num_labels
        cfg_obj = tf.AutoConfig.for_model(model_type, **d)
        net = auto.from_config(cfg_obj, attn_implementation=attn_implementation, dtype=torch.float32)
    net = net.float()
    pad = pad_token_id if pad_token_id is not None else getattr(net.config, "pad_token_id", None)
    pad = int(pad) if pad is not None else 0
    build = {
        "hf_config": _json_config(net.config),
        "num_labels": num_labels,
        "task": task,
        "pad_token_id": pad,
        "attn_implementation": attn_implementation,
    }
    model = SourceModel(
        net, source="hf", build_config=build, input_kind=input_kind, pad_token_id=pad if input_kind == "token_ids" else None
    )
    return _finish(model, structure)


def hf_directory(model: nn.Module) -> Any:
    """The transformers model inside a ``SourceModel`` of source ``hf`` (for ``save_pretrained``), else ``None``."""
    return model.net if isinstance(model, SourceModel) and model.source == "hf" else None


# --- Python factory ---------------------------------------------------------------------------------


def import_factory(ref: str) -> Any:
    """Import ``package.module:function`` without evaluating any string (``compress._utils.imports``).

    Raises:
        BadInputError: Malformed reference, missing module or attribute.
    """
    try:
        return import_callable(ref)
    except FactoryImportError as e:
        raise BadInputError(str(e)) from None


@register_family("factory")
def factory_model(
    factory: str, kwargs: dict[str, Any] | None = None, structure: dict[str, Any] | None = None
) -> nn.Module:
    """A model returned by a Python function ``package.module:function(**kwargs)``.

    Args:
        factory: ``package.module:function``; it must return an ``nn.Module`` mapping one input tensor to logits.
        kwargs: Keyword arguments for the function (JSON values).
        structure: Structure record of a student or pruned model (written by ``spec()``).
    """
    fn = import_factory(factory)
    kw = dict(kwargs or {})
    net = fn(**kw)
    if not isinstance(net, nn.Module):
        raise BadInputError(f"factory {factory!r} returned {type(net).__name__}, not a torch.nn.Module")
    return _finish(SourceModel(net, source="factory", build_config={"factory": factory, "kwargs": kw}), structure)


_BUILDERS = {
    "torchvision": torchvision_model,
    "timm": timm_model,
    "hf": hf_model,
    "factory": factory_model,
}
