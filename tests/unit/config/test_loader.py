"""The YAML reader: safe loading, line numbers, tabs, duplicates, empty files, alias bombs."""

from __future__ import annotations

import pytest

from compress.config.loader import MAX_NODES, format_path, read_yaml
from compress.errors import ConfigError


def read(tmp_path, text):
    p = tmp_path / "x.yaml"
    p.write_text(text)
    return read_yaml(p)


def test_lines_recorded(tmp_path):
    doc = read(tmp_path, "a: 1\nb:\n  - x: 2\n  - y: 3\n")
    assert doc.data == {"a": 1, "b": [{"x": 2}, {"y": 3}]}
    assert doc.line_of(("b", 1, "y")) == 4
    assert doc.line_of(("b", 1, "nonexistent")) == 4


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: 1\n\tb: 2\n", "x.yaml:2: YAML syntax error: a tab character is used for indentation; indent with spaces"),
        ("", "the pipeline file is empty"),
        ("# only a comment\n", "the pipeline file is empty"),
        ("- 1\n- 2\n", "x.yaml:1: the pipeline file holds a list; expected a mapping"),
        ("just a string\n", "holds a str; expected a mapping"),
        ("a: 1\na: 2\n", "x.yaml:2: a: key 'a' appears twice (first at line 1)"),
        ("a: !!python/object/apply:os.system ['touch pwned']\n", "only plain values, lists and mappings are allowed"),
        ("a: [1, 2\n", "YAML syntax error"),
    ],
)
def test_bad_yaml(tmp_path, text, needle):
    with pytest.raises(ConfigError) as ei:
        read(tmp_path, text)
    assert needle in str(ei.value)


def test_python_tag_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ConfigError):
        read(tmp_path, f"a: !!python/object/apply:os.system ['touch {marker}']\n")
    assert not marker.exists()


def test_alias_bomb_fails_fast(tmp_path):
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, 9):
        refs = ", ".join([f"*l{i - 1}"] * 10)
        lines.append(f"l{i}: &l{i} [{refs}]")
    with pytest.raises(ConfigError) as ei:
        read(tmp_path, "\n".join(lines) + "\n")
    assert f"more than {MAX_NODES:,} values" in str(ei.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "nope.yaml")


def test_format_path():
    assert format_path(("stages", 2, "prune", "ratio")) == "stages[2].prune.ratio"
    assert format_path(()) == "(top level)"
