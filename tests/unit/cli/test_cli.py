"""CLI: commands, exit codes, messages on stderr, no traceback for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from compress.cli.main import COMMANDS, app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[3]

GOOD = """\
name: c
teacher: {family: tiny-vit, config: {dim: 32, depth: 2}}
stages:
  - finetune: {train: {epochs: 1}}
"""


def test_command_list_matches_docs():
    names = sorted(c.name for c in app.registered_commands)
    assert names == sorted(COMMANDS)
    readme = (ROOT / "README.md").read_text()
    for c in COMMANDS:
        assert f"compress {c}" in readme, f"README does not document `compress {c}`"


def test_validate_ok_and_bad(tmp_path):
    good = tmp_path / "g.yaml"
    good.write_text(GOOD)
    r = runner.invoke(app, ["validate", str(good)])
    assert r.exit_code == 0, r.output
    assert "ok: c: finetune" in r.stdout
    bad = tmp_path / "b.yaml"
    bad.write_text(GOOD.replace("name: c", "nam: c"))
    r = runner.invoke(app, ["validate", str(bad)])
    assert r.exit_code == 2
    assert "b.yaml:1: nam: unknown key 'nam' (did you mean 'name'?)" in r.stderr
    assert "Traceback" not in r.output


def test_missing_file_is_exit_2(tmp_path):
    r = runner.invoke(app, ["run", str(tmp_path / "nope.yaml")])
    assert r.exit_code == 2
    assert "Invalid value for 'file'" in r.output


def test_schema_prints_json():
    r = runner.invoke(app, ["schema"])
    assert r.exit_code == 0
    assert "stages" in json.loads(r.stdout)["properties"]
    r = runner.invoke(app, ["schema", "--target"])
    assert "runtime" in json.loads(r.stdout)["properties"]


def test_init_writes_a_valid_annotated_pipeline(tmp_path):
    f = tmp_path / "new.yaml"
    r = runner.invoke(app, ["init", str(f)])
    assert r.exit_code == 0, r.output
    text = f.read_text()
    assert "# Training batch size. (int; default 64)" in text
    (tmp_path / "deploy").mkdir()
    import shutil

    shutil.copytree(ROOT / "deploy", tmp_path / "deploy", dirs_exist_ok=True)
    r = runner.invoke(app, ["validate", str(f)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["init", str(f)])
    assert r.exit_code == 2 and "already exists; pass --force" in r.stderr


def test_list_registries():
    r = runner.invoke(app, ["list", "stages"])
    assert r.exit_code == 0 and "finetune" in r.stdout and "distill" in r.stdout
    r = runner.invoke(app, ["list", "stagez"])
    assert r.exit_code == 2 and "did you mean 'stages'" in r.stderr


def test_stage_failure_is_exit_3_without_traceback(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(
        textwrap.dedent(GOOD).replace("{epochs: 1}", "{epochs: 1, lr: 10.0}")
        + "  - distill: {train: {epochs: 1, lr: 10.0}}\nstudent: {keep_layers: [5]}\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "compress", "run", str(p), "--run-dir", str(tmp_path / "rd"), "--quiet"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 3, r.stderr
    assert "stage 'distill' (stages[1].distill.student): keep_layers [5] out of range" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "compress",
            "--debug",
            "run",
            str(p),
            "--run-dir",
            str(tmp_path / "rd"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 3 and "Traceback" in r.stderr
    # the finished first stage was kept and is reused
    assert (tmp_path / "rd/stages/01-finetune/result.json").is_file()
