"""Read YAML safely, remembering the line of every value, and validate it into config models.

``read_yaml`` composes the document with PyYAML's *safe* loader, then builds
plain Python values while recording ``path -> line`` for every mapping key
and sequence item. It refuses duplicate keys, tab indentation (with the line),
non-mapping roots, control characters, nesting beyond Python's recursion limit,
any tag other than the plain YAML types (no ``!!python/...``, ``!!binary``,
``!!set``) and alias expansion beyond a node budget (the "billion laughs" bomb
fails fast in bounded memory). Files over ``MAX_BYTES`` are not read.

``load_config`` turns a pipeline file into a validated config: every problem is
reported at once, each as ``file:line: yaml.path: what was given; what is
expected; the fix``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from compress.errors import ConfigError

MAX_NODES = 200_000
"""Upper bound on values built from one YAML file, aliases expanded (bounds alias bombs)."""

MAX_BYTES = 4_000_000
"""Largest YAML file read."""

YamlPath = tuple[str | int, ...]

_PLAIN_TAGS = {"tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:omap"}


@dataclass
class YamlDoc:
    """A parsed YAML document with the line (1-based) of every path."""

    file: str
    data: Any
    lines: dict[YamlPath, int] = field(default_factory=dict)

    def line_of(self, path: YamlPath) -> int | None:
        """Line of ``path`` or of its closest recorded ancestor."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)


def format_path(path: YamlPath) -> str:
    """``('stages', 2, 'prune', 'ratio')`` -> ``stages[2].prune.ratio``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _where(file: str, line: int | None) -> str:
    return f"{file}:{line}" if line else file


_START = {
    "pipeline": "write one with `compress init --force {file}`",
    "deploy target": "copy a shipped target such as deploy/cpu-ort.yaml (fields: `compress schema --target`)",
}
_KEYS = {"pipeline": "name:, teacher:, stages: ...", "deploy target": "name:, runtime:, artifact: ..."}

_PLAIN_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}


def _too_deep(file: str) -> str:
    return (
        f"{file}: the YAML nests lists or mappings too deeply for a config "
        "(Python's recursion limit was reached); flatten it"
    )


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.count = 0
        self.lines: dict[YamlPath, int] = {}

    def build(self, node: yaml.Node, path: YamlPath) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ConfigError(
                f"{_where(self.file, node.start_mark.line + 1)}: the document expands to more than {MAX_NODES:,} "
                "values (anchors/aliases nested too deep?); write the values out or reduce alias nesting"
            )
        self.lines.setdefault(path, node.start_mark.line + 1)
        is_collection = isinstance(node, (yaml.MappingNode, yaml.SequenceNode))
        if node.tag not in (_PLAIN_TAGS if is_collection else _PLAIN_SCALAR_TAGS):
            raise ConfigError(
                f"{_where(self.file, node.start_mark.line + 1)}: {format_path(path)}: unsupported YAML tag "
                f"'{node.tag}'; only plain values, lists and mappings are allowed "
                "(no !!python or !!binary tags)"
            )
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict[str, Any] = {}
            for k_node, v_node in node.value:
                key = self.loader.construct_object(k_node, deep=True)
                line = k_node.start_mark.line + 1
                if not isinstance(key, (str, int, float, bool)) or key is None:
                    raise ConfigError(f"{_where(self.file, line)}: {format_path(path)}: a key must be a plain word, got {key!r}")
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    first = self.lines.get((*path, key))
                    raise ConfigError(
                        f"{_where(self.file, line)}: {format_path((*path, key))}: key '{key}' appears twice "
                        f"(first at line {first}); keep one"
                    )
                self.lines[(*path, key)] = line
                out[key] = self.build(v_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(v, (*path, i)) for i, v in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)


def read_yaml(path: str | os.PathLike[str], *, what: str = "pipeline") -> YamlDoc:
    """Parse a YAML file into plain values with a line map (safe loader only).

    Raises:
        ConfigError: Unreadable or non-UTF-8 file, too large, control characters, syntax error,
            empty document, duplicate key, unsupported tag, too deep, alias bomb.
    """
    p = Path(path)
    file = str(path)
    if not p.is_file():
        raise ConfigError(f"{file}: {what} file not found; check the path")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise ConfigError(f"{file}: {size:,} bytes is too large for a {what} file (limit {MAX_BYTES:,})")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: cannot read the {what} file as UTF-8 text ({e})") from e
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(
            f"{file}:{line}: YAML cannot contain the control character "
            f"{(chr(e.character) if isinstance(e.character, int) else e.character)!r}; "
            f"the {what} file must be plain text (remove it)"
        ) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            problem = e.problem or str(e)
            hint = "check indentation, colons and quotes"
            if "\t" in problem or "'\\t'" in problem or (mark and mark.line < len(text.splitlines()) and "\t" in text.splitlines()[mark.line][: mark.column + 1]):
                problem, hint = "a tab character is used for indentation", "indent with spaces, not tabs"
            raise ConfigError(f"{_where(file, line)}: YAML syntax error: {problem}; {hint}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: YAML error: {e}") from None
        except RecursionError:
            raise ConfigError(_too_deep(file)) from None
        if node is None:
            start = _START.get(what, "fill it in").format(file=file)
            raise ConfigError(f"{file}: the {what} file is empty; {start}")
        b = _Builder(file, loader)
        try:
            data = b.build(node, ())
        except yaml.constructor.ConstructorError as e:
            mark = e.problem_mark
            raise ConfigError(
                f"{_where(file, mark.line + 1 if mark else None)}: unsupported YAML value ({e.problem}); "
                "only plain values, lists and mappings are allowed (no !!python tags)"
            ) from None
        except RecursionError:
            raise ConfigError(_too_deep(file)) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise ConfigError(
            f"{_where(file, node.start_mark.line + 1)}: the {what} file holds {kind}; "
            f"expected a mapping of keys ({_KEYS.get(what, 'key: value')})"
        )
    return YamlDoc(file=file, data=data, lines=b.lines)
