"""Model families and model transforms, and how a model is saved without pickled code.

A *family* is a builder ``fn(**config) -> nn.Module`` registered by name
(``tiny-vit``). A family's modules expose ``spec() -> dict`` giving the config
that rebuilds the current architecture (after pruning too).

A *transform* is a registered function ``fn(model, config) -> model`` that
changes a model's structure in a way that must be replayed before a state dict
loads (e.g. inserting fake quantizers). A model records the transforms applied
to it in ``model._compress_transforms``.

``save_model`` writes ``{"spec": <json>, "state_dict": ...}`` with
``torch.save``; ``load_model`` reads it with ``weights_only=True``, rebuilds the
family, replays the transforms and loads the state dict strictly. No code is
ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress._utils.io import atomic_torch_save
from compress._utils.registry import Registry
from compress.errors import CheckpointError

FAMILIES: Registry[Callable[..., nn.Module]] = Registry("model family")
TRANSFORMS: Registry[Callable[[nn.Module, dict[str, Any]], nn.Module]] = Registry("model transform")

_TRANSFORMS_ATTR = "_compress_transforms"
_FAMILY_ATTR = "_compress_family"


def register_family(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name``; built models remember their family."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        def build(**config: Any) -> nn.Module:
            model = fn(**config)
            setattr(model, _FAMILY_ATTR, name)
            setattr(model, _TRANSFORMS_ATTR, [])
            return model

        build.__doc__ = fn.__doc__
        build.__name__ = fn.__name__
        FAMILIES.register(name)(build)
        return build

    return deco


def register_transform(
    name: str,
) -> Callable[[Callable[[nn.Module, dict[str, Any]], nn.Module]], Callable[[nn.Module, dict[str, Any]], nn.Module]]:
    """Register a structural transform that ``load_model`` replays by name."""
    return TRANSFORMS.register(name)


def record_transform(model: nn.Module, name: str, config: dict[str, Any]) -> None:
    """Note on ``model`` that transform ``name`` with ``config`` was applied."""
    hist = list(getattr(model, _TRANSFORMS_ATTR, []))
    hist.append({"name": name, "config": config})
    setattr(model, _TRANSFORMS_ATTR, hist)


def build_model(family: str, config: dict[str, Any]) -> nn.Module:
    """Build a model of a registered family from its config."""
    return FAMILIES.get(family)(**config)


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON-able spec that rebuilds ``model``'s architecture: family, config, transforms."""
    family = getattr(model, _FAMILY_ATTR, None)
    if family is None or not hasattr(model, "spec"):
        raise CheckpointError(
            f"{type(model).__name__} was not built by a registered family; it cannot be saved as a spec"
        )
    return {
        "family": family,
        "config": model.spec(),  # type: ignore[operator]
        "transforms": list(getattr(model, _TRANSFORMS_ATTR, [])),
    }


_TRANSFORM_PROVIDERS = ("compress.quant", "compress.models.hf_attention", "compress.models.timm_attention")
"""Packages that register transforms; imported before a spec's transforms are replayed, so
``load_model`` works without the caller importing them first."""


def model_from_spec(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model (random weights) from a spec, replaying its transforms."""
    import importlib

    model = build_model(spec["family"], spec["config"])
    if spec.get("transforms"):
        for provider in _TRANSFORM_PROVIDERS:
            importlib.import_module(provider)
    for t in spec.get("transforms", []):
        model = TRANSFORMS.get(t["name"])(model, t["config"])
    return model


def save_model(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save architecture spec + state dict atomically (loadable with ``weights_only=True``)."""
    spec = model_spec(model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": "compress-model/1", "spec": json.dumps(spec), "state_dict": state}, path)


def load_checkpoint_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found; expected a file written by torch.save")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise CheckpointError(
                f"{p}: refused: the file needs code to be unpickled ({msg[:200]}); "
                "compress loads only tensors and plain containers. Save a state dict instead: "
                "torch.save(model.state_dict(), path)"
            ) from e
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({type(e).__name__}: {msg[:200]})") from e


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a model saved by ``save_model`` (spec + state dict), without unpickling code."""
    obj = load_checkpoint_file(path)
    if not isinstance(obj, dict) or obj.get("format") != "compress-model/1":
        raise CheckpointError(f"{path}: not a compress model file (expected one written by save_model)")
    spec = json.loads(obj["spec"])
    model = model_from_spec(spec)
    load_state_dict_checked(model, obj["state_dict"], source=str(path))
    return model


def load_state_dict_checked(model: nn.Module, state: Any, *, source: str) -> None:
    """Load a state dict strictly; shape or key mismatches become a ``CheckpointError``."""
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: expected a state dict (name -> tensor), got {type(state).__name__}")
    own = model.state_dict()
    if own and state and all(k.startswith("net.") for k in own) and not any(str(k).startswith("net.") for k in state):
        state = {f"net.{k}": v for k, v in state.items()}  # a plain torchvision/timm/HF state dict
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:3]))
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:4])}")
        raise CheckpointError(
            f"{source}: checkpoint does not fit the model ({'; '.join(parts)}); "
            "check the teacher's family, config and num_classes"
        )
    model.load_state_dict(state, strict=True)
