"""Write a config as YAML with every key commented: type, default and description (``compress init``)."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin is typing.Annotated:
        # a union member hidden from the JSON schema (an error-reporting fallback) is hidden here too
        return "" if any(isinstance(m, SkipJsonSchema) for m in args[1:]) else _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(n for n in (_type_name(a) for a in args) if n)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp)).replace("Config", "")


def _scalar(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


def _emit(model: BaseModel, indent: int, out: list[str]) -> None:
    pad = "  " * indent
    for name, f in type(model).model_fields.items():
        value = getattr(model, name)
        default = "required" if f.is_required() else f"default {_scalar(f.get_default(call_default_factory=True)) if not isinstance(f.get_default(call_default_factory=True), BaseModel) else '{...}'}"
        comment = f"# {f.description or ''} ({_type_name(f.annotation)}; {default})"
        if isinstance(value, BaseModel):
            out.append(f"{pad}{name}:  {comment}")
            _emit(value, indent + 1, out)
        elif isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
            out.append(f"{pad}{name}:  {comment}")
            for key, sub in value.items():
                out.append(f"{pad}  {key}:")
                _emit(sub, indent + 2, out)
        elif name == "stages" and isinstance(value, list):
            out.append(f"{pad}{name}:  {comment}")
            for entry in value:
                kind = entry.kind
                out.append(f"{pad}  - {kind}:  # stage '{kind}'")
                _emit(entry.config, indent + 3, out)
        else:
            out.append(f"{pad}{name}: {_scalar(value)}  {comment}")


def annotated_yaml(cfg: BaseModel, header: str = "") -> str:
    """YAML for ``cfg`` (every field written out) with a comment on every key."""
    out = [f"# {line}" for line in header.splitlines()] if header else []
    _emit(cfg, 0, out)
    return "\n".join(out) + "\n"
