"""Train a tiny-vit on digits for one epoch with ``compress.train.fit`` and save the weights.

Run plainly (one process) or under ``torchrun --nproc_per_node 2`` (rank 0 saves); the DDP tests
compare the two results. Usage: ``python ddp_fit.py OUT_DIR [cpu|cuda]`` (cuda: NCCL, one GPU per rank).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from compress.train import TrainConfig, distributed, fit
from tests._helpers.models import digits, tiny_vit


def main(out: Path, device: str = "cpu") -> None:
    distributed.init_from_env()
    torch.manual_seed(0)
    data = digits(out / f"data-{distributed.rank()}")
    model = tiny_vit()
    init = {k: v.clone() for k, v in model.state_dict().items()}

    def ce(m, x, y):
        loss = F.cross_entropy(m(x), y)
        return loss, {"ce": loss.item()}

    cfg = TrainConfig(epochs=1, lr=3e-3, warmup_fraction=0, device=device, grad_clip=None)
    res = fit(model, ce, data, cfg, batch_size=64, seed=0, checkpoint=out / "train.ckpt")
    if distributed.is_main():
        torch.save(
            {"init": init, "state": model.state_dict(), "steps": res.steps, "world": distributed.world_size()},
            out / "result.pt",
        )
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), *(sys.argv[2:3]))
