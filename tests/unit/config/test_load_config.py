"""Pipeline config errors: each names file, line, YAML path, the value and the fix; all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compress.config import dump_config, load_config, pipeline_model
from compress.errors import ConfigError

BASE = """\
name: t
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
data: {source: digits}
stages:
  - finetune: {train: {epochs: 1}}
  - distill: {train: {epochs: 1}}
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    return str(ei.value)


def test_valid_pipeline_loads(tmp_path):
    loaded = load_config(write(tmp_path, BASE))
    assert [e.kind for e in loaded.config.stages] == ["finetune", "distill"]
    assert loaded.config.stages[0].config.train.epochs == 1


def test_roundtrip_dump_load(tmp_path):
    cfg = load_config(write(tmp_path, BASE)).config
    again = pipeline_model().model_validate(dump_config(cfg))
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BASE.replace("name: t", "nme: t"), [r"p.yaml:1: nme: unknown key 'nme' \(did you mean 'name'\?\)", "name: required"]),
        (BASE + "  - distil: {}\n", [r"p.yaml:7: stages\[2\]: unknown stage kind 'distil' \(did you mean 'distill'\?\)"]),
        (BASE.replace("epochs: 1}}\n  - distill", "epochs: -1}}\n  - distill"), [r"p.yaml:5: stages\[0\].finetune.train.epochs: got -1; expected: .*greater than or equal to 0"]),
        (BASE.replace("{train: {epochs: 1}}\n  - distill: {train", "{train: {epochz: 1}}\n  - distill: {train"), [r"stages\[0\].finetune.train.epochz: unknown key 'epochz' \(did you mean 'epochs'\?\)"]),
        (BASE.replace("family: tiny-vit", "family: tiny-vt"), [r"p.yaml:2: teacher.family: got 'tiny-vt'; expected: unknown model family 'tiny-vt' \(did you mean 'tiny-vit'\?\)"]),
        (BASE.replace("source: digits", "source: digitz"), [r"p.yaml:3: data.source: .*did you mean 'digits'"]),
        (BASE.replace("name: t", "name: 'a b/c'"), [r"p.yaml:1: name: got 'a b/c'"]),
        (BASE + "  - 5\n", [r"p.yaml:7: stages\[2\]: got 5; expected one stage as a one-key mapping"]),
        (BASE.replace("stages:\n  - finetune: {train: {epochs: 1}}\n  - distill: {train: {epochs: 1}}\n", "stages: distill\n"), [r"p.yaml:4: stages: got str; expected a list"]),
        (BASE.replace("stages:", "seed: -3\nstages:"), [r"p.yaml:4: seed: got -3"]),
        (BASE.replace("data: {source: digits}", "data: {source: digits, batch_size: 0}"), [r"p.yaml:3: data.batch_size: got 0"]),
        (BASE + "student: {keep_layers: []}\n", [r"student.keep_layers: got \[\]; expected: keep_layers is empty"]),
        (BASE + "gates: {accuracy: {max_drop: 2}}\n", [r"gates.accuracy.max_drop: got 2"]),
        (BASE + "gates: {latency: {cpu-ort: {batch: 1}}}\n", [r"gates.latency.cpu-ort: .*give at least one of p50_ms"]),
    ],
)
def test_config_errors_are_located(tmp_path, text, expected):
    msg = errors_of(tmp_path, text)
    import re

    for pat in expected:
        assert re.search(pat, msg), f"{pat!r} not in:\n{msg}"


def test_all_errors_reported_at_once(tmp_path):
    text = BASE.replace("name: t", "nme: t").replace("source: digits", "source: x") + "  - distil: {}\n"
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    assert len(ei.value.problems) >= 4  # unknown key, missing name, data.source, stage kind


def test_stage_order_is_checked(tmp_path):
    text = BASE.replace(
        "  - finetune: {train: {epochs: 1}}\n  - distill: {train: {epochs: 1}}\n",
        "  - distill: {train: {epochs: 1}}\n  - finetune: {train: {epochs: 1}}\n",
    )
    msg = errors_of(tmp_path, text)
    assert "p.yaml:6: stages[1].finetune: 'finetune' must come before 'distill'" in msg


def test_teacher_needs_weights(tmp_path):
    text = BASE.replace("  - finetune: {train: {epochs: 1}}\n", "")
    msg = errors_of(tmp_path, text)
    assert "teacher: the teacher has no checkpoint and no stage trains it" in msg


def test_missing_checkpoint_named(tmp_path):
    text = BASE.replace("config: {dim: 32, depth: 2}}", "config: {dim: 32, depth: 2}, checkpoint: nope.pt}")
    msg = errors_of(tmp_path, text)
    assert "p.yaml:2: teacher.checkpoint: file" in msg and "nope.pt not found" in msg


def test_relative_checkpoint_resolved_against_yaml(tmp_path):
    import torch

    from compress.models import build_model

    torch.save(build_model("tiny-vit", {"dim": 32, "depth": 2}).state_dict(), tmp_path / "t.pt")
    text = BASE.replace("config: {dim: 32, depth: 2}}", "config: {dim: 32, depth: 2}, checkpoint: t.pt}")
    loaded = load_config(write(tmp_path, text))
    assert loaded.config.teacher.checkpoint == (tmp_path / "t.pt").resolve()


def test_schema_is_json_schema():
    schema = pipeline_model().model_json_schema()
    assert "stages" in schema["properties"] and "teacher" in schema["required"]
