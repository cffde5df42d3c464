"""Per-call host costs around a CUDA ``torch-compile`` session: synchronize variants and Session.run checks.

Prints p50/p95 in microseconds (300 untimed calls, then 3000 timed by the host clock) of: an idle
``torch.cuda.synchronize()`` (with and without a device argument), ``current_stream().synchronize()``, a kept
stream object's ``synchronize()``, and for a tiny ViT (1 block, dim 32, batch 32, fp16) in compress's
``torch-compile`` session: ``run``, ``_run_impl``, ``run`` + ``synchronize``, and the input/output checks
alone. Used in docs/results/latency-floor-h100/README.md (session 10, point 3). From the repository root,
on a GPU:

  python benchmarks/gpu_sync_probe.py
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests._helpers: the tiny test models
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is a folder of scripts

from gpu_latency_floor import cpu_timer  # noqa: E402

from compress.runtime import open_session  # noqa: E402
from tests._helpers.models import tiny_vit  # noqa: E402


def _time(f: Callable[[], object], n: int = 3000) -> str:
    us = np.asarray(cpu_timer(f, 300, n)) * 1e3
    return f"p50 {np.percentile(us, 50):7.1f} us  p95 {np.percentile(us, 95):7.1f} us"


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_sync_probe: needs a CUDA GPU")
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    s = torch.cuda.current_stream()
    print("torch.cuda.synchronize() idle     ", _time(torch.cuda.synchronize))
    print("torch.cuda.synchronize('cuda') idle", _time(lambda: torch.cuda.synchronize(torch.device("cuda"))))
    print("current_stream().synchronize() idle", _time(lambda: torch.cuda.current_stream().synchronize()))
    print("stream.synchronize() idle          ", _time(s.synchronize))
    model = tiny_vit(depth=1, dim=32).eval()
    x = {"input": torch.randn(32, 1, 8, 8).numpy()}
    with open_session("torch-compile", model, device="cuda", precision="fp16") as sess:
        sess.run(x)  # compile + capture
        print("torch-compile run             ", _time(lambda: sess.run(x)))
        print("torch-compile _run_impl       ", _time(lambda: sess._run_impl(x)))
        print("torch-compile run+synchronize ", _time(lambda: (sess.run(x), sess.synchronize())))
        bound = sess._check_inputs(x)
        result = sess._run_impl(x)
        print(
            "torch-compile checks          ",
            _time(lambda: (sess._check_inputs(x), sess._check_outputs(result, bound))),
        )


if __name__ == "__main__":
    main()
