"""Shared pieces of the reliability tests: a small pipeline with every stage kind, a fast deploy
target, CLI and subprocess runners, run-directory snapshots and one reference run."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner, Result

from compress.cli.main import app

ROOT = Path(__file__).resolve().parents[3]

SMALL = """\
name: small
seed: 1
teacher: {family: tiny-vit, config: {dim: 32, depth: 2, num_heads: 4, mlp_dim: 64}}
student: {keep_layers: [1]}
data: {source: digits, batch_size: 128}
stages:
  - finetune: {train: {epochs: 3, lr: 0.005}}
  - distill: {train: {epochs: 2, lr: 0.005}}
  - prune: {target: {macs: 0.3}, iterative_steps: 2, recover: {epochs: 1}}
  - qat: {train: {epochs: 1}}
  - export: {formats: [onnx-fp32, onnx-int8-u8]}
  - validate: {targets: [cpu-ort]}
"""
"""Every stage kind on a 2-block, 32-wide tiny-vit; about 2 s of stage work on 2 CPU cores."""

STAGE_IDS = ["01-finetune", "02-distill", "03-prune", "04-qat", "05-export", "06-validate"]

_runner = CliRunner()


def cli(*args: str | os.PathLike[str]) -> Result:
    """``compress ARGS`` in-process; ``result.stderr`` holds the diagnostics."""
    return _runner.invoke(app, [str(a) for a in args])


def make_deploy_dir(root: Path) -> Path:
    """``root/deploy/cpu-ort.yaml``: the shipped target with 2 warm-up and 20 timed runs, one thread."""
    target = yaml.safe_load((ROOT / "deploy" / "cpu-ort.yaml").read_text())
    target.update(iterations=20, warmup=2, threads=THREADS)
    d = root / "deploy"
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu-ort.yaml").write_text(yaml.safe_dump(target, sort_keys=False))
    return d


def write_pipeline(root: Path, text: str = SMALL, name: str = "p.yaml") -> Path:
    """Write a pipeline YAML (and the fast deploy target beside it)."""
    make_deploy_dir(root)
    p = root / name
    p.write_text(text)
    return p


THREADS = 1
"""Torch and ONNX Runtime threads in these tests, in-process and in child processes alike.

One thread, because on a shared 2-core machine two spinning OpenMP threads per process slow a run
down up to 20x when another process holds a core; and equal counts keep in-process and child
runs bit-identical."""


@contextlib.contextmanager
def torch_threads(n: int = THREADS) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads():
        yield


def subprocess_env() -> dict[str, str]:
    """Environment for ``python -m compress`` children: same thread count as the test process."""
    n = str(THREADS)
    return {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "PYTHONUNBUFFERED": "1"}


class Child:
    """``python -m compress run PIPELINE --run-dir RUN_DIR --quiet`` as a child process.

    Its stderr lines are collected by a thread (``lines``), so the test can wait for a stage's
    summary line (``[2/6] 02-distill ...``) without blocking.
    """

    def __init__(self, pipeline: Path, run_dir: Path, *extra: str) -> None:
        self.run_dir = run_dir
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "compress",
                "run",
                str(pipeline),
                "--run-dir",
                str(run_dir),
                "--quiet",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=subprocess_env(),
            cwd=str(pipeline.parent),
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _pump(stream: Any, sink: list[str]) -> None:
        for raw in stream:
            sink.append(raw.decode(errors="replace").rstrip("\n"))

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def holds_lock(self) -> bool:
        """Whether the child has entered the runner (its pid is in ``RUN_DIR/.lock``)."""
        try:
            return json.loads((self.run_dir / ".lock").read_text()).get("pid") == self.proc.pid
        except (OSError, ValueError):
            return False

    def finished_stage(self, n: int) -> bool:
        """Whether the child printed the summary line of stage ``n`` (1-based; cached or ran)."""
        return any(ln.startswith(f"[{n}/") for ln in list(self.lines))

    def wait_until(self, cond: Callable[[], bool], timeout: float = 120.0) -> bool:
        """Poll ``cond`` until it holds; False if the child exits or time runs out first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            if not self.alive():
                return cond()
            time.sleep(0.005)
        return False

    def finish(self, timeout: float = 180.0) -> int:
        """Wait for the exit code and for both pipes to drain."""
        code = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (kill -9 by default)."""
        self.proc.send_signal(sig)


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (empty if it does not exist)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def manifest_hashes(run_dir: Path) -> dict[str, Any]:
    """What must not change between equal runs: per-stage file hashes and artifact hashes.

    Latency numbers and wall times differ from run to run and are left out.
    """
    m = json.loads((run_dir / "manifest.json").read_text())
    return {
        "stages": [(s["id"], s["key"], s["files"], s["artifacts"]) for s in m["stages"]],
        "artifacts": {k: (a["path"], a["sha256"], a["size_bytes"]) for k, a in m["artifacts"].items()},
        "teacher": m["teacher"],
        "accuracy": [s["metrics"].get("model", {}).get("val_accuracy") for s in m["stages"]],
    }


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run of ``SMALL`` (in-process), shared by the determinism and kill tests."""
    root = tmp_path_factory.mktemp("reference")
    p = write_pipeline(root)
    rd = root / "run"
    with torch_threads():
        r = cli("run", p, "--run-dir", rd, "--quiet")
    assert r.exit_code == 0, r.output
    return {"root": root, "pipeline": p, "run_dir": rd, "hashes": manifest_hashes(rd)}
