"""The runner: caching, --fresh, resume after a crash between and inside stages, determinism, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compress.config import load_config
from compress.errors import BadInputError
from compress.stages.runner import run_pipeline

PIPE = """\
name: r
seed: 3
teacher: {family: tiny-vit, config: {dim: 32, depth: 2, num_heads: 4, mlp_dim: 64}}
student: {keep_layers: [1]}
data: {source: digits, batch_size: 128}
stages:
  - finetune: {train: {epochs: 2, lr: 0.005}}
  - distill: {train: {epochs: 2, lr: 0.005}}
"""


def write(tmp_path: Path, text: str = PIPE) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def hashes(run_dir: Path) -> list:
    m = json.loads((run_dir / "manifest.json").read_text())
    return [(s["id"], s["files"]) for s in m["stages"]]


def test_run_writes_run_dir_and_caches(tmp_path):
    p = write(tmp_path)
    rd = tmp_path / "run"
    out = run_pipeline(load_config(p), run_dir=rd)
    assert out.exit_code == 0
    for f in (
        "pipeline.yaml",
        "manifest.json",
        "metrics.json",
        "junit.xml",
        "report.md",
        "data/splits.json",
        "stages/01-finetune/result.json",
        "stages/01-finetune/teacher.pt",
        "stages/02-distill/model.pt",
    ):
        assert (rd / f).is_file(), f
    m = json.loads((rd / "manifest.json").read_text())
    assert [s["status"] for s in m["stages"]] == ["ran", "ran"]
    assert m["stages"][1]["metrics"]["model"]["params"] < m["teacher"]["final"]["params"]
    again = run_pipeline(load_config(p), run_dir=rd)
    assert [s["status"] for s in again.manifest["stages"]] == ["cached", "cached"]
    assert hashes(rd) == [(s["id"], s["files"]) for s in out.manifest["stages"]]
    fresh = run_pipeline(load_config(p), run_dir=rd, fresh=True)
    assert [s["status"] for s in fresh.manifest["stages"]] == ["ran", "ran"]
    assert hashes(rd) == [(s["id"], s["files"]) for s in out.manifest["stages"]]  # same seed, same bytes


def test_changed_stage_config_reruns_it_and_later_stages_only(tmp_path):
    p = write(tmp_path)
    rd = tmp_path / "run"
    run_pipeline(load_config(p), run_dir=rd)
    p.write_text(PIPE.replace("distill: {train: {epochs: 2", "distill: {train: {epochs: 1"))
    out = run_pipeline(load_config(p), run_dir=rd)
    assert [s["status"] for s in out.manifest["stages"]] == ["cached", "ran"]


def test_tampered_stage_output_is_recomputed(tmp_path):
    p = write(tmp_path)
    rd = tmp_path / "run"
    run_pipeline(load_config(p), run_dir=rd)
    (rd / "stages/02-distill/model.pt").write_bytes(b"garbage")
    out = run_pipeline(load_config(p), run_dir=rd)
    assert [s["status"] for s in out.manifest["stages"]] == ["cached", "ran"]


def _run_cli(p: Path, rd: Path) -> subprocess.Popen:
    env = {**os.environ, "COMPRESS_KEEP_EPOCH_CKPT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "compress", "run", str(p), "--run-dir", str(rd), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


@pytest.mark.parametrize("when", ["between", "inside"])
def test_kill_9_then_resume_gives_identical_results(tmp_path, when):
    text = PIPE.replace("epochs: 2, lr: 0.005}}\n  - distill", "epochs: 6, lr: 0.005}}\n  - distill")
    p = write(tmp_path, text)
    ref = tmp_path / "ref"
    assert run_pipeline(load_config(p), run_dir=ref).exit_code == 0
    rd = tmp_path / "killed"
    proc = _run_cli(p, rd)
    # wait for the moment to kill: between = finetune finished; inside = its first epoch checkpoint exists
    target = rd / ("stages/01-finetune/result.json" if when == "between" else "stages/01-finetune/train.ckpt")
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (rd / ".lock").exists()  # the dead run's lock is left behind and must not block the resume
    out = run_pipeline(load_config(p), run_dir=rd)
    assert out.exit_code == 0
    assert hashes(rd) == hashes(ref)


def test_stage_dir_of_another_key_is_cleared_before_the_stage_runs(tmp_path):
    p = write(tmp_path)
    rd = tmp_path / "run"
    run_pipeline(load_config(p), run_dir=rd)
    sdir = rd / "stages/02-distill"
    assert (sdir / "stage.key").read_text().strip() == json.loads((sdir / "result.json").read_text())["key"]
    # an upstream change: distill's key changes, so a checkpoint left in its folder must not be resumed
    (sdir / "train.ckpt").write_bytes(b"stale checkpoint of another model")
    p.write_text(PIPE.replace("finetune: {train: {epochs: 2", "finetune: {train: {epochs: 1"))
    out = run_pipeline(load_config(p), run_dir=rd)
    assert [s["status"] for s in out.manifest["stages"]] == ["ran", "ran"]
    assert not (sdir / "train.ckpt").exists()
    assert (sdir / "stage.key").read_text().strip() == out.manifest["stages"][1]["key"]


def test_rerun_runs_the_named_stage_and_those_after_it_again(tmp_path):
    prune = "  - prune: {target: {macs: 0.8}, importance: magnitude, recover: {epochs: 1}}\n"
    p = write(tmp_path, PIPE + prune)
    rd = tmp_path / "run"
    first = run_pipeline(load_config(p), run_dir=rd)
    assert [s["status"] for s in first.manifest["stages"]] == ["ran", "ran", "ran"]
    by_kind = run_pipeline(load_config(p), run_dir=rd, rerun="distill")
    assert [s["status"] for s in by_kind.manifest["stages"]] == ["cached", "ran", "ran"]
    # same seed, same bytes
    assert hashes(rd) == [(s["id"], s["files"]) for s in first.manifest["stages"]]
    by_id = run_pipeline(load_config(p), run_dir=rd, rerun="03-prune")
    assert [s["status"] for s in by_id.manifest["stages"]] == ["cached", "cached", "ran"]


def test_rerun_of_a_stage_the_pipeline_lacks_is_bad_input_before_any_work(tmp_path):
    p = write(tmp_path, PIPE + "  - distill: {train: {epochs: 1, lr: 0.005}}\n")
    rd = tmp_path / "run"
    lacks = r"--rerun validate: no such stage.*01-finetune, 02-distill, 03-distill"
    with pytest.raises(BadInputError, match=lacks):
        run_pipeline(load_config(p), run_dir=rd, rerun="validate")
    with pytest.raises(BadInputError, match=r"2 distill stages; name one by its id: 02-distill, 03-distill"):
        run_pipeline(load_config(p), run_dir=rd, rerun="distill")
    assert not rd.exists()


def test_cli_rerun_of_an_unknown_stage_exits_2_without_a_traceback(tmp_path):
    from tests.unit.reliability.conftest import cli

    p = write(tmp_path)
    r = cli("run", p, "--run-dir", tmp_path / "run", "--quiet", "--rerun", "export")
    assert r.exit_code == 2
    expected = "--rerun export: no such stage; give a kind or an id of this pipeline: 01-finetune, 02-distill"
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
