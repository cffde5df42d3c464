"""ONNX Runtime CPU: a ResNet-18 (Fashion-MNIST size) in FP32 vs the old and the new INT8 ``u8s8`` files.

Builds the ``fashion-resnet`` teacher of ``benchmarks/distill_real.py`` (torchvision ResNet-18, 1x28x28
input, 3x3 stem without max-pool), trains it briefly in FP32 on Fashion-MNIST (``--train-steps``; 0 keeps
random init with BatchNorm statistics from real images), QAT-prepares it twice (BatchNorm folded): with
the default ``QuantConfig`` and with ``quantize_residual_conv_outputs: true``, calibrates both on the same
training images (``--qat-steps`` then trains each, LSQ scales included; default 0) and exports:

* ``fp32``: ``compress.export.export_onnx`` of the folded float model;
* ``u8s8 plain (before)``: ``export_onnx_qdq(flavour="u8s8", ort_integer_convs=False)`` of the default
  model, the form before issue 7 (uint8 zero point 128 everywhere);
* ``u8s8``: the current default export of the default model (zero point 0 after ``Relu``);
* ``u8s8 + residual output quantizers``: the current export of the model with output quantizers on the
  convolutions that feed residual adds.

For each file it prints latency (``compress.bench.latency.measure_latency`` on
``compress.runtime.open_session("onnxruntime", ...)``), the ONNX Runtime operator profile
(``benchmarks/ort_op_profile.py``) and parity with its fake-quant torch model (the FP32 file: with the
folded float model) on held-out test images, both for the file's own semantics (ORT basic optimizations)
and for what ORT's fused kernels compute on this CPU (all optimizations). Output is markdown.

Usage:
  python benchmarks/ort_cnn_int8.py --threads 2 --batch 32 > table.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ort_op_profile import profile, profile_table  # noqa: E402

from compress.bench.latency import measure_latency  # noqa: E402
from compress.data.fashion_mnist import DEFAULT_ROOT, read_all  # noqa: E402
from compress.export import export_onnx, export_onnx_qdq, parity, qdq_summary  # noqa: E402
from compress.models import build_model  # noqa: E402
from compress.quant import QuantConfig, calibrate_, prepare_qat, set_quant_enabled_  # noqa: E402
from compress.runtime import open_session  # noqa: E402

TEACHER = {"arch": "resnet18", "num_classes": 10, "in_chans": 1, "stem": "cifar"}
"""``TASKS["fashion-resnet"]["teacher"]`` of ``benchmarks/distill_real.py`` (without ``source``)."""


def _data(n_train: int, n_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    x, y = read_all(Path(DEFAULT_ROOT))
    x_t = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    x_t = (x_t - 0.2860) / 0.3530  # Fashion-MNIST mean / std
    y_t = torch.from_numpy(y.astype(np.int64))
    g = torch.Generator().manual_seed(seed)
    train = torch.randperm(60_000, generator=g)[:n_train]
    test = 60_000 + torch.randperm(len(x) - 60_000, generator=g)[:n_test]
    return x_t[train], y_t[train], x_t[test], y_t[test]


def _train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, lr: float = 2e-3
) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    model.train()
    for i in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=torch.Generator().manual_seed(i))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if steps == 0:  # random init: BatchNorm statistics from real images
        with torch.no_grad():
            for i in range(0, 512, 64):
                model(x[i : i + 64])
    model.eval()


def _latency(path: Path, x: torch.Tensor, *, batch: int, threads: int, iterations: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    with open_session("onnxruntime", path, threads=threads) as sess:
        name = sess.inputs[0].name

        def make(b: int) -> dict[str, np.ndarray]:
            return {name: x[rng.integers(0, len(x), b)].numpy()}

        stats = measure_latency(sess, make, batch_sizes=[batch], warmup=10, iterations=iterations, repeats=3)
    return stats[batch].to_dict()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=50, help="Timed runs per repeat (3 repeats).")
    ap.add_argument("--train-steps", type=int, default=60, help="FP32 training steps (batch 64) before QAT.")
    ap.add_argument("--calib", type=int, default=256, help="Training images calibrating the quantizers.")
    ap.add_argument("--test", type=int, default=1000, help="Held-out images for parity and accuracy.")
    ap.add_argument(
        "--qat-steps",
        type=int,
        default=0,
        help="QAT training steps (batch 64) after calibration (default 0).",
    )
    ap.add_argument("--qat-lr", type=float, default=1e-4, help="QAT learning rate (AdamW).")
    ap.add_argument("--weight-bits", type=int, default=8, help="QAT weight bits (7 avoids AVX2 saturation).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    x_tr, y_tr, x_te, y_te = _data(max(args.calib, 4096), args.test, args.seed)
    t0 = time.perf_counter()
    fp = build_model("torchvision", TEACHER)
    _train(fp, x_tr, y_tr, args.train_steps, 64)
    train_s = time.perf_counter() - t0
    calib = x_tr[: args.calib]

    def quantized(residual: bool) -> nn.Module:
        cfg = QuantConfig.model_validate(
            {"weights": {"bits": args.weight_bits}, "quantize_residual_conv_outputs": residual}
        )
        m = prepare_qat(copy.deepcopy(fp), cfg)
        calibrate_(m, lambda model: [model(calib[i : i + 64]) for i in range(0, len(calib), 64)])
        if args.qat_steps:  # LSQ scales and weights trained together, as a qat stage does
            _train(m, x_tr, y_tr, args.qat_steps, 64, lr=args.qat_lr)
        return m.eval()

    qat, qat_res = quantized(False), quantized(True)
    folded = copy.deepcopy(qat)
    set_quant_enabled_(folded, False)

    rows: list[tuple[str, Path, nn.Module]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ex = x_tr[:2]
        rows.append(("fp32", export_onnx(folded, root / "fp32.onnx", ex), folded))
        old = export_onnx_qdq(qat, root / "old.onnx", ex, flavour="u8s8", ort_integer_convs=False)
        rows.append(("u8s8 plain (before)", old, qat))
        rows.append(("u8s8", export_onnx_qdq(qat, root / "new.onnx", ex, flavour="u8s8"), qat))
        res = export_onnx_qdq(qat_res, root / "res.onnx", ex, flavour="u8s8")
        rows.append(("u8s8 + residual output quantizers", res, qat_res))
        print(
            f"# ResNet-18 (1x28x28, 3x3 stem) on ONNX Runtime CPU: FP32 vs INT8 u8s8\n\n"
            f"host: {platform.processor() or platform.machine()}, torch {torch.__version__}; "
            f"batch {args.batch}, {args.threads} threads, {args.iterations} x 3 timed runs; "
            f"{args.train_steps} FP32 training steps ({train_s:.0f} s), {args.weight_bits}-bit weights, "
            f"quantizers calibrated on {args.calib} training images, then {args.qat_steps} QAT steps; "
            "parity on "
            f"{len(x_te)} test images vs each file's fake-quant model (FP32 file: vs the folded float "
            "model).\n"
        )
        print(
            "| file | p50 ms | p95 ms | vs fp32 (p50) | file parity: max abs / cosine / top-1 agr. "
            "| ORT-fused parity: max abs / cosine / top-1 agr. | accuracy (fused) | Q/DQ |"
        )
        print("|---|---|---|---|---|---|---|---|")
        base: float | None = None
        profiles: list[tuple[str, list[tuple[str, float, int]]]] = []
        for name, path, src in rows:
            lat = _latency(path, x_te, batch=args.batch, threads=args.threads, iterations=args.iterations)
            base = base or lat["p50_ms"]
            p_file = parity(path, src, x_te, batch_size=250, threads=args.threads)
            p_ort: dict[str, Any] = parity(
                path, src, x_te, batch_size=250, graph_optimization="all", threads=args.threads, labels=y_te
            )
            summary = qdq_summary(path) if name != "fp32" else None
            qdq = f"{summary['activations']} Q, zp {summary['activation_zero_points']}" if summary else "-"
            print(
                f"| {name} | {lat['p50_ms']:.2f} | {lat['p95_ms']:.2f} | {base / lat['p50_ms']:.2f}x | "
                f"{p_file['max_abs_error']:.3g} / {p_file['cosine']:.5f} / {p_file['top1_agreement']:.3f} | "
                f"{p_ort['max_abs_error']:.3g} / {p_ort['cosine']:.5f} / {p_ort['top1_agreement']:.3f} | "
                f"{p_ort['accuracy']:.3f} (torch {p_ort['source_accuracy']:.3f}) | {qdq} |"
            )
            profiles.append((name, profile(path, batch=args.batch, threads=args.threads, runs=20, seq=None)))
        for name, rows_ in profiles:
            print(f"\n## ORT operator profile: {name}\n")
            print(profile_table(rows_))
    return 0


if __name__ == "__main__":
    sys.exit(main())
