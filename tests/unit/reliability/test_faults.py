"""Faults: kill -9 at random moments, Ctrl-C, a full disk, an unwritable run dir, NaN loss, CUDA out of
memory, two runs on one run dir; and determinism (same seed, same bytes).

A fault never leaves a run directory that the next ``compress run`` cannot finish, and the finished
run is byte-identical (stage files and artifacts) to one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import torch

import compress._utils.io as io
from compress.stages import STAGES
from tests.unit.reliability.conftest import (
    SMALL,
    STAGE_IDS,
    Child,
    cli,
    manifest_hashes,
    snapshot,
    write_pipeline,
)

INTERRUPTED = "interrupted: finished stages are kept; run the same command again to resume"


def _stray_temp_files(run_dir: Path) -> list[str]:
    return [str(p) for p in run_dir.rglob("*.tmp")]


def _statuses(run_dir: Path) -> list[str]:
    return [s["status"] for s in json.loads((run_dir / "manifest.json").read_text())["stages"]]


# ------------------------------------------------------------------------------------------ kill -9


@pytest.mark.slow
def test_random_kill_9_then_resume_ends_with_the_uninterrupted_hashes(
    tmp_path: Path, reference_run: dict[str, Any]
) -> None:
    """Five kill -9 at seeded random moments, each inside a different phase, then a resume.

    The phases are the six stages and the end of the run (final teacher metrics, gates, reports).
    A kill is anchored on what *this* child process has done (its lock, its stage summary lines),
    then delayed by a random fraction of that phase's duration in the reference run.
    """
    p = write_pipeline(tmp_path)
    rd = tmp_path / "run"
    ref = json.loads((reference_run["run_dir"] / "manifest.json").read_text())
    seconds = [s["seconds"] for s in ref["stages"]] + [1.0]
    rng = random.Random(6)
    phases = sorted(rng.sample(range(len(STAGE_IDS) + 1), 5))
    landed: list[tuple[int, int]] = []  # (phase, stages finished when killed)
    for phase in phases:
        child = Child(p, rd)
        # phase 0 = stage 1: anchor on the lock; phase k: on the summary line of stage k
        anchor = child.holds_lock if phase == 0 else (lambda c=child, k=phase: c.finished_stage(k))
        extra = 3.0 if phase == 0 else 0.0  # teacher metrics before stage 1 take a few seconds
        assert child.wait_until(anchor), f"child exited before phase {phase}: {child.lines[-5:]}"
        time.sleep(rng.uniform(0.0, extra + seconds[phase]))
        if child.alive():
            child.kill()
            landed.append((phase, sum(child.finished_stage(k) for k in range(1, 7))))
        child.finish()
    assert len(landed) >= 3, f"too few kills hit a live run: {landed}"
    final = Child(p, rd)
    assert final.finish() == 0, "\n".join(final.lines[-20:])
    assert manifest_hashes(rd) == reference_run["hashes"]
    assert _stray_temp_files(rd) == []  # a resumed run removes temp files of killed atomic writes
    assert not (rd / ".lock").exists()


# ------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_exits_130_with_one_line_and_the_next_run_resumes(tmp_path: Path) -> None:
    p = write_pipeline(tmp_path)
    rd = tmp_path / "run"
    child = Child(p, rd)
    assert child.wait_until(lambda: child.finished_stage(1))
    time.sleep(0.1)  # inside distill
    child.kill(signal.SIGINT)
    assert child.finish(timeout=60) == 130, child.lines
    summaries = [ln for ln in child.lines if ln.startswith("[")]
    rest = [ln for ln in child.lines if ln and not ln.startswith(("[", "  "))]
    assert rest == [INTERRUPTED], child.lines
    assert "Traceback" not in "\n".join(child.lines)
    assert 1 <= len(summaries) < len(STAGE_IDS)
    assert not (rd / ".lock").exists()
    assert _stray_temp_files(rd) == []
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert r.exit_code == 0, r.output
    assert _statuses(rd)[0] == "cached"


# ---------------------------------------------------------------------------------------- disk full


def _disk_fills_at(monkeypatch: pytest.MonkeyPatch, fragment: str) -> list[str]:
    """Make the first atomic write whose path contains ``fragment`` fail with ENOSPC mid-write."""
    real = io.atomic_open
    failed: list[str] = []

    @contextlib.contextmanager
    def atomic_open(path: Any, mode: str = "wb") -> Iterator[IO[Any]]:
        with real(path, mode) as f:
            if fragment in str(path) and not failed:
                f.write(b"partial")
                failed.append(str(path))
                raise OSError(errno.ENOSPC, "No space left on device")
            yield f

    monkeypatch.setattr(io, "atomic_open", atomic_open)
    return failed


@pytest.mark.parametrize(
    ("fragment", "expect"),
    [
        ("03-prune/recover", "error: stage 'prune' (stages[2].prune): no space left on device while writing {rd}/stages/03-prune/recover-"),
        ("02-distill/model.pt", "error: {rd}/stages/02-distill/model.pt: no space left on device; free space or choose a --run-dir"),
    ],
    ids=["inside-a-stage", "runner-saving-a-stage"],
)  # fmt: skip
def test_disk_full_is_exit_3_keeps_earlier_stages_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference_run: dict[str, Any], fragment: str, expect: str
) -> None:
    p = write_pipeline(tmp_path)
    rd = tmp_path / "run"
    with monkeypatch.context() as m:
        failed = _disk_fills_at(m, fragment)
        r = cli("run", p, "--run-dir", rd, "--quiet")
    assert failed, "the simulated full disk was never hit"
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    assert expect.replace("{rd}", str(rd)) in r.stderr
    assert "run the same command again (finished stages are kept)" in r.stderr
    assert _stray_temp_files(rd) == []
    assert not (rd / ".lock").exists()
    # earlier stages are intact: their files hash to what the uninterrupted run recorded
    ref = {s[0]: s[2] for s in reference_run["hashes"]["stages"]}
    finetune = json.loads((rd / "stages" / "01-finetune" / "result.json").read_text())
    assert finetune["files"] == ref["01-finetune"]
    assert {
        f: h for f, h in snapshot(rd / "stages" / "01-finetune").items() if f not in ("result.json", "stage.key")
    } == finetune["files"]
    assert not (rd / "stages" / "03-prune" / "result.json").exists()
    # and the next run (disk freed) resumes to the same bytes as an uninterrupted run
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert r.exit_code == 0, r.output
    assert _statuses(rd)[0] == "cached"
    assert manifest_hashes(rd) == reference_run["hashes"]


@pytest.mark.parametrize("layout", ["parent-is-a-file", "run-dir-is-a-file"])
def test_unwritable_run_dir_is_exit_2_naming_the_path(tmp_path: Path, layout: str) -> None:
    p = write_pipeline(tmp_path, SMALL)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    rd = blocker / "run" if layout == "parent-is-a-file" else blocker
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    want = (
        f"{blocker} is a file, not a folder" if layout == "parent-is-a-file" else "exists and is not a folder"
    )
    assert r.stderr.startswith(f"error: run directory {rd}: ")
    assert want in r.stderr and "choose another --run-dir" in r.stderr
    assert blocker.read_text() == "not a folder\n"


# ------------------------------------------------------------------------------------------ NaN/inf


def test_nan_loss_is_exit_3_with_step_terms_and_hint(tmp_path: Path) -> None:
    text = (
        "name: nan\nteacher: {family: tiny-vit, config: {dim: 32, depth: 2}}\nstages:\n"
        "  - finetune: {train: {epochs: 2, lr: 10, optimizer: sgd, grad_clip: null, warmup_fraction: 0}}\n"
    )
    p = write_pipeline(tmp_path, text)
    rd = tmp_path / "run"
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    (err,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert err.startswith("error: stage 'finetune' (stages[0].finetune): loss became ")
    assert ", step " in err
    assert "(terms: ce=" in err
    assert "try a lower learning rate (now " in err
    assert "or full precision" in err
    assert "(run with --debug for the traceback)" in r.stderr
    assert not (rd / "stages" / "01-finetune" / "result.json").exists()


# ----------------------------------------------------------------------------------- out of memory


@pytest.mark.parametrize(
    ("stage_cfg", "expect"),
    [
        ("{}", "CUDA out of memory at batch size 128; try a smaller batch: set data.batch_size: 64"),
        ("{train: {batch_size: 32}}",
         "CUDA out of memory at batch size 32; try a smaller batch: set stages[1].distill.train.batch_size: 16"),
        ("{train: {batch_size: 1}}", "CUDA out of memory at batch size 1; the batch is already 1"),
    ],
    ids=["pipeline-batch", "stage-batch", "batch-of-one"],
)  # fmt: skip
def test_cuda_out_of_memory_names_stage_batch_and_a_smaller_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage_cfg: str, expect: str
) -> None:
    def oom(self: Any, ctx: Any, cfg: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(STAGES.get("distill"), "run", oom)
    text = (
        "name: oom\nteacher: {family: tiny-vit, config: {dim: 32, depth: 2}}\nstudent: {keep_layers: [1]}\n"
        "data: {batch_size: 128}\nstages:\n  - finetune: {train: {epochs: 1}}\n"
        f"  - distill: {stage_cfg}\n"
    )
    p = write_pipeline(tmp_path, text)
    r = cli("run", p, "--run-dir", tmp_path / "run", "--quiet")
    assert r.exit_code == 3, r.output
    assert "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: stage 'distill' (stages[1].distill): ")
    assert expect in errors[0]
    assert (tmp_path / "run" / "stages" / "01-finetune" / "result.json").is_file()  # earlier stage kept


# ------------------------------------------------------------------------------ two runs at once


def test_second_run_on_a_busy_run_dir_is_refused(tmp_path: Path) -> None:
    p = write_pipeline(tmp_path)
    rd = tmp_path / "run"
    first = Child(p, rd)
    assert first.wait_until(first.holds_lock)
    r = cli("run", p, "--run-dir", rd, "--quiet")
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert r.stderr.startswith(f"error: {rd}: another compress run (pid {first.proc.pid} on ")
    assert "use --run-dir for a separate run" in r.stderr
    assert first.alive()
    assert first.finish() == 0, "\n".join(first.lines[-10:])  # the first run was not disturbed
    assert _statuses(rd) == ["ran"] * len(STAGE_IDS)


# ------------------------------------------------------------------------------------- determinism


def test_same_pipeline_and_seed_gives_identical_hashes(tmp_path: Path, reference_run: dict[str, Any]) -> None:
    rd = tmp_path / "again"
    r = cli("run", reference_run["pipeline"], "--run-dir", rd, "--quiet")
    assert r.exit_code == 0, r.output
    assert _statuses(rd) == ["ran"] * len(STAGE_IDS)
    assert manifest_hashes(rd) == reference_run["hashes"]
    for name in ("model.fp32.onnx", "model.int8-u8.onnx", "preprocess.json"):
        a, b = rd / "artifacts" / name, reference_run["run_dir"] / "artifacts" / name
        assert a.read_bytes() == b.read_bytes(), name


def test_another_seed_gives_other_hashes(tmp_path: Path, reference_run: dict[str, Any]) -> None:
    head = SMALL.split("  - distill:")[0].replace("seed: 1", "seed: 2")
    p = write_pipeline(tmp_path, head)
    rd = tmp_path / "seed2"
    assert cli("run", p, "--run-dir", rd, "--quiet").exit_code == 0
    ref_finetune = reference_run["hashes"]["stages"][0][2]
    assert manifest_hashes(rd)["stages"][0][2]["model.pt"] != ref_finetune["model.pt"]
