"""report.md: per-target tables carry each model's roofline floor and measured / floor."""

from __future__ import annotations

import copy

from compress.report.html import render_html
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


def test_target_section_states_each_artifacts_drop_with_its_interval():
    manifest = copy.deepcopy(fixture_manifest())
    models = manifest["stages"][2]["metrics"]["targets"]["cpu-ort"]["models"]
    md = render_markdown(manifest)
    assert "95 % interval" not in md  # a run made before validate recorded the counts
    # teacher 0.94, onnx-int8 0.92 over 1,000 examples: 40 only the teacher gets right, 20 only the artifact
    models["onnx-int8"]["paired"] = {"examples": 1000, "teacher_only": 40, "artifact_only": 20}
    section = _target_section(render_markdown(manifest), "cpu-ort")
    # Tango's score interval, asymmetric at this size (Wald's drop -+ 1.96 se would be 0.49 to 3.51)
    assert (
        "Accuracy drop against the teacher in points, with its 95 % interval over the 1,000 paired "
        "examples: onnx-int8 2.00 (0.50 to 3.60)."
    ) in section
    assert "onnx-fp32 " not in section.split("Accuracy drop")[1].split("\n")[0]  # no counts, no claim
    html = render_html(manifest)
    assert "onnx-int8 2.00 (0.50 to 3.60)" in html
