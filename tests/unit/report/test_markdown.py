"""report.md: per-target tables carry each model's roofline floor and measured / floor."""

from __future__ import annotations

import copy

from compress.report.markdown import render_markdown
from tests.unit.report.test_html import fixture_manifest


def _target_section(md: str, name: str) -> str:
    start = md.index(f"## Target `{name}`")
    return md[start : md.index("\n## ", start + 1)]


def test_target_table_shows_floor_and_p95_over_floor_at_the_largest_batch():
    md = render_markdown(fixture_manifest())
    section = _target_section(md, "cpu-ort")
    header = next(line for line in section.splitlines() if line.startswith("| model |"))
    assert header.endswith("| roofline floor ms @32 | p95 / floor |")
    rows = {line.split(" | ")[0][2:]: line for line in section.splitlines() if line.startswith("| ")}
    # teacher p50 8 ms, so p95 10.4 ms over a 0.25 ms floor: 41.6x
    assert rows["teacher"].endswith("| 0.2500 (compute) | 41.6x |")
    assert rows["onnx-int8"].endswith("| 0.2500 (compute) | 26.0x |")
    # a model that failed to load has no latency and no floor: dashes, and the row keeps its columns
    assert rows["broken"].endswith("| – | – |")
    assert rows["broken"].count("|") == header.count("|")
    assert "Roofline floor:" in section


def test_target_table_without_roofline_has_no_floor_columns():
    manifest = copy.deepcopy(fixture_manifest())
    for models in (manifest["stages"][2]["metrics"]["targets"]["cpu-ort"]["models"],):
        for entry in models.values():
            entry.pop("roofline", None)
    section = _target_section(render_markdown(manifest), "cpu-ort")
    assert "floor" not in section
