"""DistributedDataParallel with NCCL: 2 processes on 2 GPUs reach the single-GPU result (needs 2 GPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"),
]


def _run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(args + [str(out), "cuda"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "result.pt", weights_only=True)


def test_two_gpu_nccl_ddp_matches_single_gpu(tmp_path):
    script = str(ROOT / "tests" / "_helpers" / "ddp_fit.py")
    single = _run([sys.executable, script], tmp_path / "single")
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script], tmp_path / "ddp")
    assert ddp["world"] == 2 and ddp["steps"] == single["steps"] == 20

    def flat(state):
        return torch.cat([state[k].flatten().float() for k in sorted(state)])

    moved = (flat(single["state"]) - flat(single["init"])).norm().item()
    gap = (flat(ddp["state"]) - flat(single["state"])).norm().item()
    assert moved > 0.1
    assert gap / moved < 0.02, f"NCCL DDP ended {gap:.4g} from single-GPU (moved {moved:.4g})"
