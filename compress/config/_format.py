"""Turn pydantic validation errors into located, actionable messages."""

from __future__ import annotations

import types
import typing
from typing import Any, Union

from pydantic import BaseModel, Discriminator, Tag, ValidationError

from compress._utils.registry import did_you_mean
from compress.config.loader import YamlDoc, YamlPath, format_path


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional; return the first pydantic model or container type inside."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(args) == 1:
            return _unwrap(args[0])
        if models:
            return models[0]
        return tp
    return tp


def _pick_member(tp: Any, node: Any) -> Any:
    """For ``Annotated[Union[...], Discriminator(fn)]``, the member ``fn`` picks for the document ``node``.

    Any other type (or no node to look at) is returned unchanged.
    """
    if typing.get_origin(tp) is not typing.Annotated or node is None:
        return tp
    inner, *meta = typing.get_args(tp)
    disc = next((m for m in meta if isinstance(m, Discriminator) and callable(m.discriminator)), None)
    if disc is None:
        return tp
    try:
        tag = disc.discriminator(node)
    except Exception:  # the discriminator of a malformed node: fall back to the first member
        return tp
    for member in typing.get_args(inner):
        if typing.get_origin(member) is typing.Annotated and any(
            isinstance(m, Tag) and m.tag == tag for m in typing.get_args(member)[1:]
        ):
            return member
    return tp


def model_at(root: type[BaseModel], path: YamlPath, data: Any = None) -> type[BaseModel] | None:
    """The config model class that the mapping at ``path`` is validated into (or None).

    ``data`` (the parsed document) lets a union discriminated by a function (``data:`` by its
    ``source``) resolve to the member the document picks.
    """
    from compress.stages import STAGES

    cur: Any = root
    node: Any = data
    i = 0
    while i < len(path):
        part = path[i]
        cur = _unwrap(_pick_member(cur, node))
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            if part not in cur.model_fields:
                return None
            f = cur.model_fields[part]
            # pydantic moves a field's discriminator from the annotation into its metadata
            disc = [m for m in f.metadata if isinstance(m, Discriminator)]
            cur = typing.Annotated[(f.annotation, *disc)] if disc else f.annotation
            node = _child(node, part)
            if part == "stages" and len(path) > i + 2 and path[i + 2] in STAGES:
                # stages[i].<kind>...: the kind picks the stage's config class
                cur = STAGES.get(str(path[i + 2])).config_class
                node = _child(_child(node, path[i + 1]), path[i + 2])
                i += 3
                continue
            i += 1
            continue
        origin = typing.get_origin(cur)
        if origin in (list, dict):
            args = typing.get_args(cur)
            cur = args[-1] if args else Any
            node = _child(node, part)
            i += 1
            continue
        return None
    cur = _unwrap(_pick_member(cur, node))
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _child(node: Any, part: Any) -> Any:
    """``node[part]`` of the document, or None where there is no such value."""
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _clean_loc(loc: tuple[Any, ...], data: Any = None) -> YamlPath:
    """The YAML path of a pydantic ``loc``: drop the parts pydantic adds that are not in the document.

    Those are the duplicated union tag (``stages.2.prune.prune`` -> ``stages.2.prune``) and
    validator or union-member tags (``function-after[...]``, ``list[...]``). A part that is a key
    of the document at that point is always kept, whatever characters it holds.
    """
    out: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
            continue
        if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            out.append(part)
            continue
        if isinstance(part, str) and out and out[-1] == part and len(out) >= 2 and isinstance(out[-2], int):
            continue
        if isinstance(part, str) and (part.startswith("function-") or "[" in part):
            continue
        out.append(part)
        node = None
    return tuple(out)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def format_validation_error(err: ValidationError, doc: YamlDoc, root: type[BaseModel]) -> list[str]:
    """One message per pydantic error, each naming file:line, the YAML path, the value and the fix."""
    msgs: list[str] = []
    for e in err.errors(include_url=False):
        path = _clean_loc(tuple(e["loc"]), doc.data)
        line = doc.line_of(path)
        where = f"{doc.file}:{line}" if line else doc.file
        etype = e["type"]
        if etype == "extra_forbidden":
            parent = model_at(root, path[:-1], doc.data)
            key = str(path[-1]) if path else "?"
            valid = sorted(parent.model_fields) if parent else []
            hint = did_you_mean(key, valid)
            listing = f"; valid keys here: {', '.join(valid)}" if valid else ""
            msgs.append(f"{where}: {format_path(path)}: unknown key '{key}'{hint}{listing}")
        elif etype == "missing":
            parent = model_at(root, path[:-1], doc.data)
            desc = ""
            if parent is not None and path and path[-1] in parent.model_fields:
                d = parent.model_fields[str(path[-1])].description
                desc = f" ({d})" if d else ""
            msgs.append(f"{where}: {format_path(path)}: required key is missing{desc}; add it")
        else:
            got = f"got {_short(e.get('input'))}; " if "input" in e else ""
            text = e["msg"]
            if text.startswith("Value error, "):
                text = text[len("Value error, ") :]
            msgs.append(f"{where}: {format_path(path)}: {got}expected: {text}")
    return msgs
