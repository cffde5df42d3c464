"""DistributedDataParallel under torchrun: 2 CPU processes (gloo) reach the single-process result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from compress.train.loop import _shard

ROOT = Path(__file__).resolve().parents[3]


def _run(args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COMPRESS_DDP_BACKEND": "gloo"}
    proc = subprocess.run(args + [str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out / "result.pt", weights_only=True)


def test_two_process_ddp_matches_single_process(tmp_path):
    script = str(ROOT / "tests" / "_helpers" / "ddp_fit.py")
    single = _run([sys.executable, script], tmp_path / "single")
    ddp = _run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script],
        tmp_path / "ddp",
    )
    assert ddp["world"] == 2 and single["world"] == 1
    assert ddp["steps"] == single["steps"] == 20
    def flat(state):
        return torch.cat([state[k].flatten().float() for k in sorted(state)])

    w_init, w_single, w_ddp = flat(single["init"]), flat(single["state"]), flat(ddp["state"])
    assert torch.equal(flat(ddp["init"]), w_init)  # same start
    moved = (w_single - w_init).norm().item()
    gap = (w_ddp - w_single).norm().item()
    assert moved > 0.1  # training moved the weights, so agreement is not trivial
    # Adam amplifies float rounding differences of the all-reduced gradients a little; the two runs
    # must still take the same path: the gap is a small fraction of the distance travelled.
    assert gap / moved < 0.02, f"DDP ended {gap:.4g} from single-process (moved {moved:.4g})"


def test_shard_weights_sum_to_the_full_batch():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    parts = [_shard(x, y, r, 3) for r in range(3)]
    assert sum(len(p[1]) for p in parts) == 10
    # each rank's weight is len(part) * world / len(batch): the ranks' mean of weighted means is the batch mean
    means = [(p[0].mean() * p[2]).item() for p in parts]
    assert abs(sum(means) / 3 - x.mean().item()) < 1e-6
    lone = _shard(x[:1], y[:1], 0, 2)  # rank 0 gets nothing of a 1-example batch
    assert lone[2] == 0.0 and len(lone[1]) == 1
